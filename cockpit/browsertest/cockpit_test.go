package browsertest

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/syscare/syscare/dbus/testbus"
)

// cockpitWSPath finds cockpit-ws, which is not on PATH: Debian's place, then Fedora's.
func cockpitWSPath() string {
	for _, p := range []string{"/usr/lib/cockpit/cockpit-ws", "/usr/libexec/cockpit-ws"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// cockpitSession is a cockpit-ws serving one local session: its bridge runs as the user
// cockpit-ws runs as, with the environment given here, so the page's "system bus" is the
// test's private bus and its packages come from the test's data directory. Nothing of the
// host's Cockpit configuration or of its system bus is touched.
type cockpitSession struct {
	URL string // of the SysCare page
	cmd *exec.Cmd
	log *testbus.Log
}

// installPackage copies the page (cockpit/) where the bridge looks for packages:
// DIR/share/cockpit/syscare, DIR/share going first in XDG_DATA_DIRS. A copy, not a
// link, so that the unprivileged session can read it whatever the source tree's modes.
func installPackage(t *testing.T, repo, dir string) string {
	share := filepath.Join(dir, "share")
	dst := filepath.Join(share, "cockpit/syscare")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"manifest.json", "index.html", "syscare.js", "syscare.css"} {
		b, err := os.ReadFile(filepath.Join(repo, "cockpit", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return share
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startCockpit runs cockpit-ws --local-session as uid (0 or an unprivileged user) with
// busAddr as the system bus.
func startCockpit(t *testing.T, name, dir, share, busAddr string, uid int) *cockpitSession {
	home := filepath.Join(dir, "home-"+name)
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chown(home, uid, uid)
	port := freePort(t)
	s := &cockpitSession{log: &testbus.Log{}}
	s.cmd = exec.Command(cockpitWSPath(), "--port", strconv.Itoa(port), "--address", "127.0.0.1", "--local-session=cockpit-bridge")
	s.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + home, "XDG_RUNTIME_DIR=" + home,
		"XDG_DATA_DIRS=" + share + ":/usr/share", "DBUS_SYSTEM_BUS_ADDRESS=" + busAddr, "LANG=C.UTF-8"}
	if uid != 0 {
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start cockpit-ws: %v", err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		if t.Failed() {
			t.Logf("cockpit-ws (%s) log:\n%s", name, s.log)
		}
	})
	s.URL = fmt.Sprintf("http://127.0.0.1:%d/cockpit/@localhost/syscare/index.html", port)
	for end := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(s.URL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		if time.Now().After(end) {
			t.Fatalf("cockpit-ws (%s) does not serve the page: %v\n%s", name, err, s.log)
		}
	}
}
