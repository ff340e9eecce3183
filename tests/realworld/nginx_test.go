package realworld

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/syscare/syscare/tests/internal/debsrc"
	"github.com/syscare/syscare/tests/testenv"
)

var nginxOrig = &debsrc.Orig{Source: "nginx", File: "nginx_1.22.1.orig.tar.gz",
	SHA256: "9ebb333a9e82b952acd3e2b4aeb1d4ff6406f72491bab6cd9fe69f0dea737f31", Env: "SYSCARE_NGINX_ORIG"}

// buildNginx builds nginx with its own configure and make at -O2 -g; the rewrite and
// gzip modules are left out so that PCRE and zlib headers are not needed.
func buildNginx(t *testing.T) (bin, src string) {
	t.Helper()
	tarball := nginxOrig.Get(t, aptDir())
	dir := t.TempDir()
	sh(t, dir, "tar xzf "+tarball)
	src = filepath.Join(dir, "nginx-1.22.1")
	sh(t, src, "./configure --without-http_rewrite_module --without-http_gzip_module --with-cc-opt='-O2 -g' && make -j2")
	return filepath.Join(src, "objs", "nginx"), src
}

// The replacement of ngx_http_send_header, compiled against nginx's own headers: the
// original's body plus a response header naming the worker that answered.
const nginxPatch = `#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <upatch.h>

static ngx_int_t ngx_http_send_header_v2(ngx_http_request_t *r)
{
	ngx_table_elt_t *h;
	u_char *p;

	if (r->post_action) {
		return NGX_OK;
	}
	if (r->header_sent) {
		ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0, "header already sent");
		return NGX_ERROR;
	}
	if (r->err_status) {
		r->headers_out.status = r->err_status;
		r->headers_out.status_line.len = 0;
	}
	h = ngx_list_push(&r->headers_out.headers);
	p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
	if (h != NULL && p != NULL) {
		h->hash = 1;
		ngx_str_set(&h->key, "X-Hotpatch");
		h->value.data = p;
		h->value.len = ngx_sprintf(p, "%P", ngx_pid) - p;
		h->lowcase_key = NULL;
	}
	return ngx_http_top_header_filter(r);
}
UPATCH_FUNC(ngx_http_send_header, ngx_http_send_header_v2);
`

// children returns the pids whose parent is ppid.
func children(t *testing.T, ppid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			out = append(out, pid)
		}
	}
	slices.Sort(out)
	return out
}

// probe makes n requests, each on a new connection (so that the kernel spreads them
// over the workers' reuseport sockets), and returns how many answers carried each
// X-Hotpatch value ("" for none).
func probe(t *testing.T, url string, n int) map[string]int {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", url, resp.Status)
		}
		seen[resp.Header.Get("X-Hotpatch")]++
	}
	return seen
}

func pidSet(pids []int) map[string]bool {
	m := map[string]bool{}
	for _, p := range pids {
		m[strconv.Itoa(p)] = true
	}
	return m
}

// wantPatchedBy checks that every answer carried X-Hotpatch and that every worker
// in pids answered.
func wantPatchedBy(t *testing.T, what string, seen map[string]int, pids []int) {
	t.Helper()
	want := pidSet(pids)
	for v, n := range seen {
		if !want[v] {
			t.Errorf("%s: %d answers with X-Hotpatch %q, want one of workers %v (all: %v)", what, n, v, pids, seen)
		}
	}
	for p := range want {
		if seen[p] == 0 {
			t.Errorf("%s: worker %s never answered (answers: %v)", what, p, seen)
		}
	}
}

// TestNginx patches nginx's master and both workers with one patch --all, checks that
// every worker answers with the new code, reloads nginx (the patched master forks new
// workers, which inherit the patch), then removes it from every process with unpatch
// --all.
func TestNginx(t *testing.T) {
	testenv.NeedE2E(t)
	needRoot(t)
	t.Parallel()
	nginx, src := buildNginx(t)
	debug := production(t, nginx)
	bid := buildID(t, nginx)
	var incs []string
	for _, d := range []string{"src/core", "src/event", "src/event/modules", "src/os/unix", "objs", "src/http", "src/http/modules"} {
		incs = append(incs, "-I", filepath.Join(src, d))
	}
	obj := selfContained(t, compilePatch(t, "nginx", nginxPatch, bid, incs...), debug)

	prefix := t.TempDir()
	for _, d := range []string{"logs", "html"} {
		if err := os.MkdirAll(filepath.Join(prefix, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(prefix, "html", "index.html"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	conf := filepath.Join(prefix, "nginx.conf")
	// user root: the test's temporary directories are not readable by nobody.
	cfg := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 2;
user root;
pid %[1]s/logs/nginx.pid;
error_log %[1]s/logs/error.log info;
events { worker_connections 128; }
http {
	access_log off;
	server {
		listen 127.0.0.1:%[2]d reuseport;
		root %[1]s/html;
	}
}
`, prefix, port)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nginx, "-p", prefix, "-c", conf)
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	master := cmd.Process.Pid
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt) // SIGINT: fast shutdown of master and workers
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			errLog, _ := os.ReadFile(filepath.Join(prefix, "logs", "error.log"))
			t.Logf("nginx output:\n%s\nerror.log:\n%s", log.String(), tail(string(errLog), 4000))
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/index.html", port)
	workers := waitWorkers(t, master, nil, exited)
	t.Logf("nginx master %d, workers %v, build-id %s", master, workers, bid)
	if seen := probe(t, url, 20); seen[""] != 20 {
		t.Fatalf("answers before the patch: %v, want no X-Hotpatch", seen)
	}

	// Clients keep requesting through the patch and the unpatch; none may fail.
	load := startLoad(url, 4)
	out := mustManage(t, "patch", "--all", "--binary", nginx, "--patch", obj, "--uuid", "nginx-hdr")
	for _, p := range append([]int{master}, workers...) {
		if !strings.Contains(out, fmt.Sprintf("pid %d: patched nginx-hdr", p)) {
			t.Errorf("patch --all did not report pid %d", p)
		}
	}
	wantPatchedBy(t, "after patch --all", probe(t, url, 60), workers)

	// The load stops before the reload: with reuseport, connections still queued on an
	// old worker's socket are reset when it closes, patched or not.
	checkLoad(t, "load through patch --all", load)

	// Reload: the master re-reads its configuration and forks new workers.
	sh(t, prefix, fmt.Sprintf("%s -p %s -c %s -s reload", nginx, prefix, conf))
	fresh := waitWorkers(t, master, workers, exited)
	t.Logf("after reload: workers %v", fresh)
	seen := probe(t, url, 60)
	if seen[""] > 0 {
		t.Errorf("after reload: %d of 60 answers came from unpatched code: %v", seen[""], seen)
	}
	wantPatchedBy(t, "after reload", seen, fresh)
	for _, p := range fresh {
		if info := mustManage(t, "info", "--pid", strconv.Itoa(p)); !strings.Contains(info, "nginx-hdr") {
			t.Errorf("info of new worker %d lacks the inherited patch:\n%s", p, info)
		}
	}

	load = startLoad(url, 4)
	out = mustManage(t, "unpatch", "--all", "--binary", nginx, "--uuid", "nginx-hdr")
	for _, p := range append([]int{master}, fresh...) {
		if !strings.Contains(out, fmt.Sprintf("pid %d: unpatched nginx-hdr", p)) {
			t.Errorf("unpatch --all did not report pid %d", p)
		}
	}
	if seen := probe(t, url, 40); seen[""] != 40 {
		t.Errorf("answers after unpatch --all: %v, want no X-Hotpatch", seen)
	}
	checkLoad(t, "load through unpatch --all", load)
	for _, p := range append([]int{master}, fresh...) {
		if info := mustManage(t, "info", "--pid", strconv.Itoa(p)); !strings.Contains(info, "no patches") {
			t.Errorf("info of pid %d after unpatch --all:\n%s", p, info)
		}
	}
	// A reload after the unpatch forks clean workers from the restored master.
	sh(t, prefix, fmt.Sprintf("%s -p %s -c %s -s reload", nginx, prefix, conf))
	waitWorkers(t, master, fresh, exited)
	if seen := probe(t, url, 20); seen[""] != 20 {
		t.Errorf("answers after unpatch and reload: %v", seen)
	}
}

// waitWorkers waits until the master has exactly two children, none of them in old.
func waitWorkers(t *testing.T, master int, old []int, exited chan error) []int {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("nginx master exited: %v", err)
		default:
		}
		kids := children(t, master)
		if len(kids) == 2 && !slices.ContainsFunc(kids, func(p int) bool { return slices.Contains(old, p) }) {
			return kids
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx workers: %v (old %v)", kids, old)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// load keeps n clients requesting url, each on new connections.
type load struct {
	stop     atomic.Bool
	ok, fail atomic.Int64
	firstErr atomic.Value
	wg       sync.WaitGroup
}

func startLoad(url string, n int) *load {
	l := &load{}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := 0; i < n; i++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for !l.stop.Load() {
				resp, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %s", resp.Status)
					}
				}
				if err != nil {
					l.fail.Add(1)
					l.firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	return l
}

func (l *load) finish() (ok, failed int64, firstErr any) {
	l.stop.Store(true)
	l.wg.Wait()
	return l.ok.Load(), l.fail.Load(), l.firstErr.Load()
}

func checkLoad(t *testing.T, what string, l *load) {
	t.Helper()
	ok, failed, firstErr := l.finish()
	t.Logf("%s: %d answers, %d failures", what, ok, failed)
	if failed > 0 || ok == 0 {
		t.Errorf("%s: %d answers, %d failures (first: %v)", what, ok, failed, firstErr)
	}
}
