package main

import (
	"bytes"
	"strings"
	"testing"
)

// A stream as go test -json writes it: one passing package, one with a skipped and a
// failed test.
const stream = `{"Action":"run","Package":"example/a","Test":"TestFast"}
{"Action":"output","Package":"example/a","Test":"TestFast","Output":"=== RUN   TestFast\n"}
{"Action":"pass","Package":"example/a","Test":"TestFast","Elapsed":0.5}
{"Action":"output","Package":"example/a","Output":"ok  \texample/a\t0.6s\n"}
{"Action":"pass","Package":"example/a","Elapsed":0.6}
{"Action":"run","Package":"example/b","Test":"TestLong"}
{"Action":"output","Package":"example/b","Test":"TestLong","Output":"=== RUN   TestLong\n"}
{"Action":"output","Package":"example/b","Test":"TestLong","Output":"    long_test.go:12: long end-to-end test: runs with SYSCARE_E2E=1 (make test-e2e)\n"}
{"Action":"output","Package":"example/b","Test":"TestLong","Output":"--- SKIP: TestLong (0.00s)\n"}
{"Action":"skip","Package":"example/b","Test":"TestLong","Elapsed":0}
{"Action":"run","Package":"example/b","Test":"TestBroken"}
{"Action":"output","Package":"example/b","Test":"TestBroken","Output":"    b_test.go:7: want 2, got 3\n"}
{"Action":"fail","Package":"example/b","Test":"TestBroken","Elapsed":12.25}
{"Action":"run","Package":"example/b","Test":"TestBroken/sub"}
{"Action":"pass","Package":"example/b","Test":"TestBroken/sub","Elapsed":30}
{"Action":"output","Package":"example/b","Output":"FAIL\n"}
{"Action":"output","Package":"example/b","Output":"FAIL\texample/b\t12.3s\n"}
{"Action":"fail","Package":"example/b","Elapsed":12.3}
go: downloading example.com/x v1.0.0
`

func TestStream(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run([]string{"-slowest", "5"}, strings.NewReader(stream), &out, &errOut)
	if code != 1 {
		t.Errorf("exit %d, want 1 for a failed test", code)
	}
	want := `ok   example/a 0.6s
SKIP example/b TestLong: long end-to-end test: runs with SYSCARE_E2E=1 (make test-e2e)
    b_test.go:7: want 2, got 3
FAIL example/b 12.3s
go: downloading example.com/x v1.0.0
slowest 2 tests:
      12.2s  fail example/b TestBroken
       0.5s  pass example/a TestFast
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}

func TestPassingStreamExitsZero(t *testing.T) {
	first := stream[:strings.Index(stream, `{"Action":"run","Package":"example/b"`)]
	var out bytes.Buffer
	if code := run(nil, strings.NewReader(first), &out, &out); code != 0 {
		t.Errorf("exit %d for a passing run:\n%s", code, out.String())
	}
}
