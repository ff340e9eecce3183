package realworld

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/internal/debsrc"
	"github.com/syscare/syscare/tests/testenv"
)

var redisOrig = &debsrc.Orig{Source: "redis", File: "redis_7.0.15.orig.tar.gz",
	SHA256: "4b1dc4ee6d622a09fff9c6777191209750fb5e5a725ef78ea012d6eef4c22982", Env: "SYSCARE_REDIS_ORIG"}

// buildRedis builds redis-server with its own Makefile: -O2 -g, the bundled jemalloc.
func buildRedis(t *testing.T) (bin, src string) {
	t.Helper()
	tarball := redisOrig.Get(t, aptDir())
	dir := t.TempDir()
	sh(t, dir, "tar xzf "+tarball)
	src = filepath.Join(dir, "redis-7.0.15")
	sh(t, src, "make -j2 BUILD_TLS=no USE_SYSTEMD=no redis-server")
	return filepath.Join(src, "src", "redis-server"), src
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// redisConn is one client connection speaking inline commands.
type redisConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialRedis(addr string) (*redisConn, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	return &redisConn{c: c, r: bufio.NewReader(c)}, nil
}

// do sends one inline command and returns the first reply line.
func (rc *redisConn) do(cmd string, timeout time.Duration) (string, error) {
	rc.c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(rc.c, "%s\r\n", cmd); err != nil {
		return "", err
	}
	line, err := rc.r.ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

func redisDo(t *testing.T, addr, cmd string) string {
	t.Helper()
	rc, err := dialRedis(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.c.Close()
	reply, err := rc.do(cmd, 10*time.Second)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	return reply
}

// hammer keeps n connections sending PING and counts the replies.
type hammer struct {
	stop                   atomic.Bool
	pong, patched, other   atomic.Int64
	firstOther, firstError atomic.Value
	errs                   atomic.Int64
	wg                     sync.WaitGroup
}

func startHammer(t *testing.T, addr, hotpatched string, n int) *hammer {
	h := &hammer{}
	for i := 0; i < n; i++ {
		rc, err := dialRedis(addr)
		if err != nil {
			t.Fatal(err)
		}
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			defer rc.c.Close()
			for !h.stop.Load() {
				reply, err := rc.do("PING", 10*time.Second)
				switch {
				case err != nil:
					h.errs.Add(1)
					h.firstError.CompareAndSwap(nil, err.Error())
					return
				case reply == "+PONG":
					h.pong.Add(1)
				case reply == hotpatched:
					h.patched.Add(1)
				default:
					h.other.Add(1)
					h.firstOther.CompareAndSwap(nil, reply)
				}
			}
		}()
	}
	return h
}

func (h *hammer) finish() { h.stop.Store(true); h.wg.Wait() }

// The replacement of pingCommand is written against Redis's own server.h, as a real
// fix would be: it reads fields of the client and of the globals server and shared.
const redisPingPatch = `#include "server.h"
#include <upatch.h>
static void pingCommand_v2(client *c) {
	if (c->argc > 2) {
		addReplyErrorArity(c);
		return;
	}
	if (c->argc == 1)
		addReplyStatusFormat(c, "HOTPATCHED port=%d", server.port);
	else
		addReplyBulk(c, c->argv[1]);
}
UPATCH_FUNC(pingCommand, pingCommand_v2);
`

const redisDebugPatch = `#include <upatch.h>
typedef struct client client;
void addReplyStatus(client *c, const char *status);
static void debugCommand_v2(client *c) { addReplyStatus(c, "DEBUG-PATCHED"); }
UPATCH_FUNC(debugCommand, debugCommand_v2);
`

// bioProcessBackgroundJobs is the body of every bio thread, which always sits in it.
const redisBioPatch = `#include <upatch.h>
static void *bio_v2(void *arg) { return arg; }
UPATCH_FUNC(bioProcessBackgroundJobs, bio_v2);
`

// TestRedis replaces the function behind PING in a running redis-server with its bio
// and I/O threads while clients hammer it, then removes the patch; a patch of a
// function the main thread is sleeping in, or the bio threads live in, is refused as
// busy and the server keeps running unharmed.
func TestRedis(t *testing.T) {
	testenv.NeedE2E(t)
	needRoot(t)
	t.Parallel()
	server, src := buildRedis(t)
	debug := production(t, server)
	bid := buildID(t, server)
	port := freePort(t)
	// The flags Redis's Makefile compiles server.c with that matter to server.h.
	incs := []string{"-DUSE_JEMALLOC"}
	for _, d := range []string{"src", "deps/hiredis", "deps/lua/src", "deps/hdr_histogram", "deps/jemalloc/include"} {
		incs = append(incs, "-I", filepath.Join(src, d))
	}
	pingObj := selfContained(t, compilePatch(t, "ping", redisPingPatch, bid, incs...), debug)
	hotpatched := fmt.Sprintf("+HOTPATCHED port=%d", port)
	debugObj := selfContained(t, compilePatch(t, "debug", redisDebugPatch, bid), debug)
	bioObj := selfContained(t, compilePatch(t, "bio", redisBioPatch, bid), debug)

	addr := fmt.Sprintf("127.0.0.1:%d", port)
	cmd := exec.Command(server, "--port", fmt.Sprint(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--io-threads", "2", "--io-threads-do-reads", "yes", "--enable-debug-command", "yes", "--daemonize", "no",
		"--dir", t.TempDir())
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("redis-server log:\n%s", tail(log.String(), 4000))
		}
	})
	alive := func() {
		t.Helper()
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("redis-server exited: %v", err)
		default:
		}
	}
	for i := 0; ; i++ {
		if rc, err := dialRedis(addr); err == nil {
			reply, err := rc.do("PING", 2*time.Second)
			rc.c.Close()
			if err == nil && reply == "+PONG" {
				break
			}
		}
		if i > 100 {
			t.Fatalf("redis-server does not answer on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	// main thread, three bio threads, one I/O thread
	if len(tasks) < 5 {
		t.Fatalf("redis-server has %d threads, want at least 5", len(tasks))
	}
	t.Logf("redis-server pid %d, %d threads, build-id %s", pid, len(tasks), bid)

	pid_ := fmt.Sprint(pid)
	h := startHammer(t, addr, hotpatched, 4)
	waitAtLeast(t, "PONG replies before the patch", h.pong.Load, 1)
	mustManage(t, "patch", "--pid", pid_, "--patch", pingObj, "--uuid", "redis-ping")
	if got := redisDo(t, addr, "PING"); got != hotpatched {
		t.Errorf("PING after patch: %q, want %q", got, hotpatched)
	}
	if got := redisDo(t, addr, "PING hello"); got != "$5" {
		t.Errorf("PING hello after patch: %q, want the bulk reply $5", got)
	}
	if got := redisDo(t, addr, "PING a b"); !strings.HasPrefix(got, "-ERR wrong number of arguments") {
		t.Errorf("PING a b after patch: %q, want the arity error", got)
	}
	waitAtLeast(t, "HOTPATCHED replies while patched", h.patched.Load, 1)
	if info := mustManage(t, "info", "--pid", pid_); !strings.Contains(info, "redis-ping") || !strings.Contains(info, "pingCommand") {
		t.Errorf("info lacks the patch:\n%s", info)
	}
	mustManage(t, "unpatch", "--pid", pid_, "--uuid", "redis-ping")
	if got := redisDo(t, addr, "PING"); got != "+PONG" {
		t.Errorf("PING after unpatch: %q, want +PONG", got)
	}
	pongs := h.pong.Load()
	waitAtLeast(t, "PONG replies after the unpatch", h.pong.Load, pongs+1)
	h.finish()
	alive()
	t.Logf("hammer: %d PONG, %d HOTPATCHED, %d other, %d errors", h.pong.Load(), h.patched.Load(), h.other.Load(), h.errs.Load())
	if h.errs.Load() != 0 || h.other.Load() != 0 {
		t.Errorf("hammer: %d errors (first %v), %d unexpected replies (first %v)", h.errs.Load(), h.firstError.Load(), h.other.Load(), h.firstOther.Load())
	}
	if h.pong.Load() == 0 || h.patched.Load() == 0 {
		t.Errorf("hammer saw %d PONG and %d HOTPATCHED: want both", h.pong.Load(), h.patched.Load())
	}

	// Not busy, but asleep: the main thread sits in nanosleep under debugCommand while
	// pingCommand is patched; stopping every thread interrupts the sleep, which must be
	// restarted when the process resumes, not cut short. (The engine injects its system
	// calls in the last thread, an I/O thread blocked on its mutex.)
	sleeper0, err := dialRedis(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer sleeper0.c.Close()
	slept0 := make(chan string, 1)
	start := time.Now()
	go func() {
		reply, err := sleeper0.do("DEBUG SLEEP 2", 20*time.Second)
		if err != nil {
			reply = err.Error()
		}
		slept0 <- reply
	}()
	waitMainAsleep(t, pid)
	mustManage(t, "patch", "--pid", pid_, "--patch", pingObj, "--uuid", "redis-ping-asleep")
	if reply := <-slept0; reply != "+OK" {
		t.Errorf("DEBUG SLEEP 2 across the patch: %q", reply)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("DEBUG SLEEP 2 across the patch returned after %v: the sleep was cut short", d)
	}
	if got := redisDo(t, addr, "PING"); got != hotpatched {
		t.Errorf("PING after patching a sleeping server: %q", got)
	}
	mustManage(t, "unpatch", "--pid", pid_, "--uuid", "redis-ping-asleep")

	// Busy: the main thread sleeps inside debugCommand (DEBUG SLEEP).
	sleeper, err := dialRedis(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer sleeper.c.Close()
	slept := make(chan string, 1)
	go func() {
		reply, err := sleeper.do("DEBUG SLEEP 3", 20*time.Second)
		if err != nil {
			reply = err.Error()
		}
		slept <- reply
	}()
	waitMainAsleep(t, pid)
	// Without waiting (--timeout 0) the busy thread refuses the patch.
	out, code := manage(t, "patch", "--pid", pid_, "--patch", debugObj, "--uuid", "redis-debug", "--retries", "2", "--timeout", "0")
	if code != 3 || !strings.Contains(out, "debugCommand") {
		t.Errorf("patch of debugCommand during DEBUG SLEEP: exit %d, want 3 (busy) naming debugCommand\n%s", code, out)
	}
	if reply := <-slept; reply != "+OK" {
		t.Errorf("DEBUG SLEEP: %q", reply)
	}
	// With the default wait the tool lets the sleeping command return from
	// debugCommand (the old code answers it), then patches in the same attach.
	go func() {
		reply, err := sleeper.do("DEBUG SLEEP 2", 20*time.Second)
		if err != nil {
			reply = err.Error()
		}
		slept <- reply
	}()
	waitMainAsleep(t, pid)
	waitStart := time.Now()
	mustManage(t, "patch", "--pid", pid_, "--patch", debugObj, "--uuid", "redis-debug")
	if reply := <-slept; reply != "+OK" {
		t.Errorf("DEBUG SLEEP during the waiting patch: %q, want the old code's +OK", reply)
	}
	t.Logf("patch waited %v for DEBUG SLEEP 2 to return", time.Since(waitStart).Round(time.Millisecond))
	if got := redisDo(t, addr, "DEBUG SLEEP 0"); got != "+DEBUG-PATCHED" {
		t.Errorf("DEBUG after patch: %q", got)
	}
	mustManage(t, "unpatch", "--pid", pid_, "--uuid", "redis-debug")
	if got := redisDo(t, addr, "DEBUG SLEEP 0"); got != "+OK" {
		t.Errorf("DEBUG after unpatch: %q", got)
	}

	// Busy for good: every bio thread lives in bioProcessBackgroundJobs.
	out, code = manage(t, "patch", "--pid", pid_, "--patch", bioObj, "--uuid", "redis-bio", "--retries", "2", "--timeout", "1s")
	if code != 3 || !strings.Contains(out, "bioProcessBackgroundJobs") {
		t.Errorf("patch of bioProcessBackgroundJobs: exit %d, want 3 (busy)\n%s", code, out)
	}
	if info := mustManage(t, "info", "--pid", pid_); strings.Contains(info, "redis-") {
		t.Errorf("info after everything was removed or refused:\n%s", info)
	}
	if got := redisDo(t, addr, "PING"); got != "+PONG" {
		t.Errorf("final PING: %q", got)
	}
	alive()
}

// waitAtLeast waits until count() reaches n; the bound is a hang guard (a loaded
// machine runs the hammer late, and a fixed pause may see no reply at all).
func waitAtLeast(t *testing.T, what string, count func() int64, n int64) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); count() < n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("%s: %d within 30s, want %d", what, count(), n)
		}
	}
}

// waitMainAsleep waits until redis-server's main thread sits in a sleep system call
// (DEBUG SLEEP's usleep: nanosleep or clock_nanosleep), so that what follows meets
// the command inside debugCommand however late a loaded machine started it.
func waitMainAsleep(t *testing.T, pid int) {
	t.Helper()
	path := fmt.Sprintf("/proc/%d/syscall", pid)
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if nr, _, _ := strings.Cut(string(b), " "); nr == "35" || nr == "230" { // x86-64 nanosleep, clock_nanosleep
			return
		}
		if time.Now().After(end) {
			t.Fatalf("redis-server's main thread not asleep within 30s (%s: %q)", path, strings.TrimSpace(string(b)))
		}
	}
}
