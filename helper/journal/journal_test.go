package journal

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"
)

func TestEncodeDecode(t *testing.T) {
	in := []Field{{"MESSAGE", "one line"}, {"REPORT", "two\nlines"}, {"EMPTY", ""}, {"EQ", "a=b"}}
	msg := Encode(in)
	want := "MESSAGE=one line\nREPORT\n\x09\x00\x00\x00\x00\x00\x00\x00two\nlines\nEMPTY=\nEQ=a=b\n"
	if string(msg) != want {
		t.Fatalf("Encode = %q, want %q", msg, want)
	}
	out, err := Decode(msg)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("Decode = %v", out)
	}
	for i := range in {
		if out[i] != in[i] {
			t.Errorf("field %d = %v, want %v", i, out[i], in[i])
		}
	}
	for _, bad := range []string{"NOEQ", "F\n\x05\x00\x00", "F\n\xff\x00\x00\x00\x00\x00\x00\x00ab\n", "F\n\x01\x00\x00\x00\x00\x00\x00\x00ab"} {
		if _, err := Decode([]byte(bad)); err == nil {
			t.Errorf("Decode(%q): no error", bad)
		}
	}
}

func TestFieldName(t *testing.T) {
	for in, want := range map[string]string{
		"patch": "PATCH", "target-path": "TARGET_PATH", "_pid": "PID", "9x": "X", "__": "", "ok.v2": "OK_V2",
		strings.Repeat("a", 70): strings.Repeat("A", 64),
	} {
		if got := FieldName(in); got != want {
			t.Errorf("FieldName(%q) = %q, want %q", in, got, want)
		}
	}
}

// listen is a stand-in for journald's socket: a datagram socket whose entries, inline or
// passed as a memfd, the test reads back.
var memfds int // entries received as a memfd

func listen(t *testing.T) (string, func() []Field) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "socket")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return path, func() []Field {
		t.Helper()
		buf, oob := make([]byte, 1<<20), make([]byte, 64)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		msg := buf[:n]
		if oobn > 0 {
			cms, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				t.Fatal(err)
			}
			fds, err := unix.ParseUnixRights(&cms[0])
			if err != nil {
				t.Fatal(err)
			}
			f := os.NewFile(uintptr(fds[0]), "memfd")
			defer f.Close()
			seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
			if err != nil || seals&unix.F_SEAL_WRITE == 0 {
				t.Errorf("memfd seals %#x, %v: journald wants it sealed", seals, err)
			}
			if msg, err = readAll(f); err != nil {
				t.Fatal(err)
			}
			memfds++
		}
		fields, err := Decode(msg)
		if err != nil {
			t.Fatal(err)
		}
		return fields
	}
}

func readAll(f *os.File) ([]byte, error) {
	if _, err := f.Seek(0, 0); err != nil {
		return nil, err
	}
	var out []byte
	buf := make([]byte, 1<<16)
	for {
		n, err := f.Read(buf)
		out = append(out, buf[:n]...)
		if n == 0 || err != nil {
			return out, nil
		}
	}
}

func values(fields []Field, name string) []string {
	var v []string
	for _, f := range fields {
		if f.Name == name {
			v = append(v, f.Value)
		}
	}
	return v
}

func TestHookFields(t *testing.T) {
	path, recv := listen(t)
	hook, err := NewHook(path, "syscare-helper")
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	log := logrus.New()
	log.SetOutput(discard{})
	log.AddHook(hook)

	log.WithFields(logrus.Fields{"method": "Apply", "ids": []string{"a-1/HP1", "b-1/HP2"}, "pid": 42,
		"target": "/usr/bin/foo", "uuid": "u-1", "force": false}).WithError(errors.New("busy\nthread 7")).Warn("transaction failed")
	f := recv()
	for name, want := range map[string]string{"MESSAGE": "transaction failed", "PRIORITY": "4", "SYSLOG_IDENTIFIER": "syscare-helper",
		"OPERATION": "Apply", "PID": "42", "TARGET": "/usr/bin/foo", "PATCH_UUID": "u-1", "FORCE": "false", "ERROR": "busy\nthread 7"} {
		if got := values(f, name); len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q (entry %v)", name, got, want, f)
		}
	}
	if got := values(f, "PATCH"); strings.Join(got, ",") != "a-1/HP1,b-1/HP2" {
		t.Errorf("PATCH = %q, want one field per id", got)
	}

	log.Error("e")
	if got := values(recv(), "PRIORITY"); got[0] != "3" {
		t.Errorf("error priority %v", got)
	}
	// An entry larger than a datagram goes as a sealed memfd.
	big := strings.Repeat("x", 4<<20)
	log.WithField("patch", "p").Info(big)
	before := memfds
	f = recv()
	if memfds != before+1 {
		t.Errorf("a 4 MiB entry did not come as a memfd")
	}
	if got := values(f, "MESSAGE"); len(got) != 1 || got[0] != big {
		t.Errorf("large entry lost its message (%d fields)", len(f))
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestStderrIsJournal runs a child whose stderr is a pipe: only JOURNAL_STREAM naming
// that very pipe counts.
func TestStderrIsJournal(t *testing.T) {
	if os.Getenv("JOURNAL_CHILD") == "1" {
		if StderrIsJournal() {
			os.Stdout.WriteString("journal")
		} else {
			os.Stdout.WriteString("text")
		}
		os.Exit(0)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(w.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	for stream, want := range map[string]string{
		"":                                "text",
		"garbage":                         "text",
		"1:" + itoa(st.Ino+1):             "text",
		itoa(st.Dev) + ":" + itoa(st.Ino): "journal",
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestStderrIsJournal$")
		cmd.Env = append(os.Environ(), "JOURNAL_CHILD=1", "JOURNAL_STREAM="+stream)
		cmd.Stderr = w
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != want {
			t.Errorf("JOURNAL_STREAM=%q: %s, want %s", stream, out, want)
		}
	}
	w.Close()
}

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }
