// Package capture records how a package is compiled: a compiler wrapper put in front of
// cc/gcc/c++/g++ (PATH shims, CC/CXX, and bind mounts over absolute compiler paths in a
// private mount namespace) rewrites the flags a hot patch needs and logs every compile
// and link, so the builder can later rebuild single translation units.
package capture

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Kinds of record.
const (
	KindCompile = "compile"
	KindLink    = "link"
)

// LogName is the record log's file name inside the capture directory.
const LogName = "capture.jsonl"

// Record is one compiler invocation the wrapper saw. A compile record always describes
// exactly one translation unit: the wrapper splits multi-source commands.
type Record struct {
	Kind string `json:"kind"`
	// Dir is the working directory of the command.
	Dir string `json:"dir"`
	// Lang is "c" or "c++": which real compiler to run again.
	Lang string `json:"lang"`
	// Args are the arguments the real compiler got (after the rewrite), without argv[0].
	Args []string `json:"args"`
	// Source and Object are absolute paths (compile records).
	Source string `json:"source,omitempty"`
	Object string `json:"object,omitempty"`
	// Deps are the absolute paths of the files the TU read (its depfile), source included.
	Deps []string `json:"deps,omitempty"`
	// Output and Inputs are absolute paths (link records): objects, archives, shared libraries.
	Output string   `json:"output,omitempty"`
	Inputs []string `json:"inputs,omitempty"`
}

// appendRecord writes r as one line with a single write on an O_APPEND file, so that
// wrappers running in parallel (make -j) never interleave their lines.
func appendRecord(dir string, r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	f, err := os.OpenFile(filepath.Join(dir, LogName), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadLog returns the records of a capture directory in the order they were written.
func ReadLog(dir string) ([]Record, error) {
	f, err := os.Open(filepath.Join(dir, LogName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return DecodeLog(f)
}

// DecodeLog parses a JSON-lines record log.
func DecodeLog(r io.Reader) ([]Record, error) {
	var recs []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return nil, fmt.Errorf("capture log line %d: %w", n, err)
		}
		recs = append(recs, rec)
	}
	return recs, sc.Err()
}
