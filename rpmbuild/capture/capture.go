package capture

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// NSExecArg is the first argument that makes the wrapper binary enter the namespace
// set-up mode (see ExecInNamespace) instead of its normal command line.
const NSExecArg = "__capture-exec"

// envBind lists, separated by ':', the real compiler files to cover in the namespace;
// envPriv lists where each one stays reachable for the wrapper.
const (
	envBind = "SYSCARE_CAPTURE_BIND"
	envPriv = "SYSCARE_CAPTURE_PRIV"
	// envExtra holds Capture.Extra, separated by spaces.
	envExtra = "SYSCARE_CAPTURE_EXTRA"
)

// ErrNoCompiler is returned when no gcc is on PATH.
var ErrNoCompiler = errors.New("no C compiler (gcc) on PATH")

// Capture is a prepared capture directory: shims, the real compilers, the record log.
type Capture struct {
	// Dir holds the record log, depfiles, split objects and the PATH shims.
	Dir string
	// Wrapper is the executable that acts as the compiler wrapper (this program).
	Wrapper string
	// RealCC and RealCXX are the resolved compiler files outside the namespace
	// (RealCXX is empty when there is no g++).
	RealCC, RealCXX string
	// Bind covers the real compiler files with the wrapper in a private mount namespace,
	// which catches calls by absolute path (/usr/bin/gcc) that PATH shims miss.
	Bind bool
	// Extra are flags added after AddedFlags that the real compilers were found to
	// accept (see OptionalFlags).
	Extra []string
}

// OptionalFlags are added to every compile and link when the compiler accepts them.
// -mno-direct-extern-access (gcc 12) makes code read variables it does not define
// through the GOT: a patch then reaches data of other libraries (glibc's stderr, say),
// which may lie too far for a PC-relative access from where the patch is loaded, and
// the loader turns the access back into a direct one where it is in reach. Older
// compilers do without, and such patches are refused at load time, saying why.
var OptionalFlags = []string{"-mno-direct-extern-access"}

// New prepares dir as a capture directory for the wrapper executable.
func New(dir, wrapper string, bind bool) (*Capture, error) {
	c := &Capture{Dir: dir, Wrapper: wrapper, Bind: bind}
	var err error
	if c.RealCC, err = realCompiler("gcc"); err != nil {
		return nil, ErrNoCompiler
	}
	c.RealCXX, _ = realCompiler("g++")
	for _, f := range OptionalFlags {
		if accepts(c.RealCC, "c", f) && (c.RealCXX == "" || accepts(c.RealCXX, "c++", f)) {
			c.Extra = append(c.Extra, f)
		}
	}
	shims := filepath.Join(dir, "shims")
	if err := os.MkdirAll(shims, 0o755); err != nil {
		return nil, err
	}
	for _, n := range []string{"cc", "gcc", "c++", "g++"} {
		p := filepath.Join(shims, n)
		_ = os.Remove(p)
		if err := os.Symlink(wrapper, p); err != nil {
			return nil, fmt.Errorf("compiler shim: %w", err)
		}
	}
	return c, nil
}

// accepts tells whether compiler compiles a unit of language lang with flag, warnings
// being errors (an unknown -m option is only a warning for some compilers).
func accepts(compiler, lang, flag string) bool {
	cmd := exec.Command(compiler, "-Werror", flag, "-x", lang, "-c", "-o", os.DevNull, "-")
	cmd.Stdin = strings.NewReader("int syscare_probe;\n")
	return cmd.Run() == nil
}

// realCompiler finds name on PATH and resolves it to the file that runs.
func realCompiler(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", err
	}
	if p, err = filepath.Abs(p); err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(p)
}

// privPath is where the real compiler file i stays visible inside the namespace.
func (c *Capture) privPath(i int, real string) string {
	return filepath.Join(c.Dir, "real", strconv.Itoa(i)+"-"+filepath.Base(real))
}

func (c *Capture) reals() []string {
	r := []string{c.RealCC}
	if c.RealCXX != "" {
		r = append(r, c.RealCXX)
	}
	return r
}

// Env returns base with the capture set up: shims first on PATH, CC/CXX, and the
// wrapper's own variables.
func (c *Capture) Env(base []string) []string {
	cc, cxx := c.RealCC, c.RealCXX
	if c.Bind {
		cc = c.privPath(0, c.RealCC)
		if c.RealCXX != "" {
			cxx = c.privPath(1, c.RealCXX)
		}
	}
	shims := filepath.Join(c.Dir, "shims")
	var env []string
	path := "/usr/local/bin:/usr/bin:/bin"
	for _, kv := range base {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "PATH":
			path = v
		case "CC", "CXX", EnvDir, EnvCC, EnvCXX, EnvCCArgv0, EnvCXXArgv0, envBind, envPriv, envExtra:
		default:
			env = append(env, kv)
		}
	}
	env = append(env, "PATH="+shims+":"+path,
		"CC="+filepath.Join(shims, "gcc"), "CXX="+filepath.Join(shims, "g++"),
		EnvDir+"="+c.Dir, EnvCC+"="+cc, EnvCXX+"="+cxx,
		EnvCCArgv0+"="+c.RealCC, EnvCXXArgv0+"="+c.RealCXX, envExtra+"="+strings.Join(c.Extra, " "))
	if c.Bind {
		var priv []string
		for i, r := range c.reals() {
			priv = append(priv, c.privPath(i, r))
		}
		env = append(env, envBind+"="+strings.Join(c.reals(), ":"), envPriv+"="+strings.Join(priv, ":"))
	}
	return env
}

// Command returns a command that runs name with the capture on. With Bind it starts the
// wrapper binary in a new mount namespace, which covers the compilers and then execs name.
func (c *Capture) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if c.Bind {
		cmd = exec.CommandContext(ctx, c.Wrapper, append([]string{NSExecArg, name}, args...)...)
		// Go makes / recursively private in the child before exec, so the binds made
		// there never reach the host's mount table.
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	} else {
		cmd = exec.CommandContext(ctx, name, args...)
	}
	cmd.Env = c.Env(os.Environ())
	return cmd
}

// Records reads the record log.
func (c *Capture) Records() ([]Record, error) { return ReadLog(c.Dir) }

// ExecInNamespace runs inside the fresh mount namespace made by Command: it keeps each
// real compiler reachable at its private path, binds the wrapper over it, and execs
// args[0]. It returns only on error.
func ExecInNamespace(args []string) error {
	if len(args) == 0 {
		return errors.New("capture exec: no command")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("capture exec: %w", err)
	}
	reals := strings.Split(os.Getenv(envBind), ":")
	privs := strings.Split(os.Getenv(envPriv), ":")
	if len(reals) != len(privs) || reals[0] == "" {
		return errors.New("capture exec: no compilers to bind")
	}
	for i, r := range reals {
		if err := os.MkdirAll(filepath.Dir(privs[i]), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(privs[i], nil, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(r, privs[i], "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s: %w", r, err)
		}
	}
	for _, r := range reals {
		if err := unix.Mount(self, r, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind wrapper over %s: %w", r, err)
		}
	}
	prog, err := exec.LookPath(args[0])
	if err != nil {
		return fmt.Errorf("capture exec: %w", err)
	}
	return syscall.Exec(prog, args, os.Environ())
}

// CanBind reports whether this process may create mount namespaces (root, or CAP_SYS_ADMIN).
func CanBind() bool { return os.Geteuid() == 0 }
