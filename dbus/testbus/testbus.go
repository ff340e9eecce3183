// Package testbus starts a private dbus-daemon shaped like the system bus, from
// dbus/sandbox-bus.conf.in with SysCare's real policy, whose activation starts a
// freshly built syscare-helper: the bus every end-to-end test talks to instead of the
// host's system bus.
package testbus

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	godbus "github.com/godbus/dbus/v5"

	"github.com/syscare/syscare/dbus"
)

// Options describe one bus.
type Options struct {
	// RepoDir is the repository root (for the config template and the policy file).
	RepoDir string
	// Dir is a scratch directory for bus.conf, the service files and the socket.
	Dir string
	// Listen replaces the template's unix:path=Dir/bus.sock when set (an abstract
	// socket reaches a chroot, where the path would not).
	Listen string
	// HelperExec is the Exec= line that activates syscare-helper.
	HelperExec string
	// Services are other activatable services: bus name to Exec= line.
	Services map[string]string
	// Env is added to the daemon's environment (the activated services inherit it).
	Env []string
}

// Bus is a running private bus.
type Bus struct {
	// Addr is the bus address clients connect to.
	Addr string
	// Log collects the daemon's and the activated services' stderr.
	Log    *Log
	daemon *exec.Cmd
}

// Log is a buffer safe for concurrent writers.
type Log struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Start writes the configuration and starts the daemon.
func Start(o Options) (*Bus, error) {
	services := filepath.Join(o.Dir, "services")
	if err := os.MkdirAll(services, 0o755); err != nil {
		return nil, err
	}
	all := map[string]string{syscarebus.BusName: o.HelperExec}
	for name, exec := range o.Services {
		all[name] = exec
	}
	for name, exec := range all {
		svc := fmt.Sprintf("[D-BUS Service]\nName=%s\nExec=%s\nUser=root\n", name, exec)
		if err := os.WriteFile(filepath.Join(services, name+".service"), []byte(svc), 0o644); err != nil {
			return nil, err
		}
	}
	tmpl, err := os.ReadFile(filepath.Join(o.RepoDir, "dbus/sandbox-bus.conf.in"))
	if err != nil {
		return nil, err
	}
	conf := string(tmpl)
	if o.Listen != "" {
		const listen = "unix:path=@DIR@/bus.sock"
		if !strings.Contains(conf, listen) {
			return nil, fmt.Errorf("sandbox-bus.conf.in no longer has the listen line %q to replace", listen)
		}
		conf = strings.Replace(conf, listen, o.Listen, 1)
	}
	conf = strings.NewReplacer("@DIR@", o.Dir, "@SERVICEDIR@", services,
		"@POLICY@", filepath.Join(o.RepoDir, "dbus/org.openeuler.SysCare1.conf")).Replace(conf)
	if err := os.WriteFile(filepath.Join(o.Dir, "bus.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	b := &Bus{Log: &Log{}}
	b.daemon = exec.Command("dbus-daemon", "--config-file="+filepath.Join(o.Dir, "bus.conf"), "--nofork", "--print-address=1")
	out, err := b.daemon.StdoutPipe()
	if err != nil {
		return nil, err
	}
	b.daemon.Stderr = b.Log
	b.daemon.Env = append(os.Environ(), o.Env...)
	if err := b.daemon.Start(); err != nil {
		return nil, fmt.Errorf("start dbus-daemon: %w", err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("dbus-daemon address: %w\n%s", err, b.Log)
	}
	b.Addr = strings.TrimSpace(line)
	return b, nil
}

// HelperPid returns the pid of the process that owns SysCare's bus name, or 0.
func (b *Bus) HelperPid() int {
	conn, err := godbus.Connect(b.Addr)
	if err != nil {
		return 0
	}
	defer conn.Close()
	var pid uint32
	if conn.BusObject().Call("org.freedesktop.DBus.GetConnectionUnixProcessID", 0, syscarebus.BusName).Store(&pid) != nil {
		return 0
	}
	return int(pid)
}

// Close stops the daemon and the helper it activated.
func (b *Bus) Close() {
	pid := b.HelperPid()
	b.daemon.Process.Kill()
	b.daemon.Wait()
	if pid > 0 {
		// The helper exits when its bus goes away; make sure it does.
		time.Sleep(100 * time.Millisecond)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}
