package patchmeta

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func sample() *Patch {
	return &Patch{
		Schema: SchemaVersion, UUID: "1b4e28ba-2fa1-11d2-883f-0016d3cca427", Name: "HP001", Version: "1", Release: "1",
		Arch: "x86_64", Kind: KindUser,
		Target: Package{Name: "redis", Epoch: 0, Version: "6.2.5", Release: "1", Arch: "x86_64"},
		Entities: []Entity{{UUID: "2b4e28ba-2fa1-11d2-883f-0016d3cca427", File: "redis-server.upatch",
			TargetPath: "/usr/bin/redis-server", BuildID: "9f3c", SHA256: strings.Repeat("a", 64),
			Functions: []Function{{Name: "greet"}}}},
	}
}

func TestRoundTripAndNames(t *testing.T) {
	p := sample()
	var buf bytes.Buffer
	if err := p.Encode(&buf); err != nil {
		t.Fatal(err)
	}
	q, err := Decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if q.EntityName(q.Entities[0]) != "redis-6.2.5-1/HP001-1-1/redis-server" {
		t.Errorf("entity name %q", q.EntityName(q.Entities[0]))
	}
	if q.RPMName() != "patch-redis-6.2.5-1-HP001" {
		t.Errorf("rpm name %q", q.RPMName())
	}
	q.Target.Epoch = 2
	if q.Target.EVR() != "2:6.2.5-1" {
		t.Errorf("evr %q", q.Target.EVR())
	}
}

func TestValidateRefuses(t *testing.T) {
	for name, mut := range map[string]func(*Patch){
		"schema":      func(p *Patch) { p.Schema = 9 },
		"uuid":        func(p *Patch) { p.UUID = "not-a-uuid" },
		"kind":        func(p *Patch) { p.Kind = "firmware" },
		"relpath":     func(p *Patch) { p.Entities[0].TargetPath = "usr/bin/x" },
		"file escape": func(p *Patch) { p.Entities[0].File = "../../etc/passwd" },
		"sha":         func(p *Patch) { p.Entities[0].SHA256 = "abc" },
		"no entities": func(p *Patch) { p.Entities = nil },
		"dup uuid":    func(p *Patch) { p.Entities[0].UUID = p.UUID },
	} {
		p := sample()
		mut(p)
		if err := p.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate() = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := Decode(strings.NewReader(`{"schema":1,"surprise":true}`)); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown field accepted: %v", err)
	}
}

func TestVerifyFiles(t *testing.T) {
	dir := t.TempDir()
	p := sample()
	obj := filepath.Join(dir, p.Entities[0].File)
	os.WriteFile(obj, []byte("object"), 0o644)
	sum, _ := FileSHA256(obj)
	p.Entities[0].SHA256 = sum
	if err := p.VerifyFiles(dir); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(obj, []byte("tampered"), 0o644)
	if err := p.VerifyFiles(dir); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("tampered file: %v", err)
	}
}

// TestSameReasonEveryTime: a patch.json with several problems names the same one, in
// the same words, on every read; JSON errors say the line and column.
func TestSameReasonEveryTime(t *testing.T) {
	var good bytes.Buffer
	if err := sample().Encode(&good); err != nil {
		t.Fatal(err)
	}
	manyBad := strings.NewReplacer(`"name": "HP001"`, `"name": "bad name"`, `"version": "1"`, `"version": "1 2"`,
		`"release": "1"`, `"release": ""`, `"version": "6.2.5"`, `"version": "6 2"`).Replace(good.String())
	cases := map[string]struct{ doc, want string }{
		"several bad fields": {manyBad, `invalid patch metadata: name "bad name" is empty or has characters RPM does not allow`},
		"syntax":             {"{\n  \"schema\": 1,\n  \"uuid\" \"x\"\n}\n", "invalid patch metadata: line 3, column 10: invalid character '\"' after object key"},
		"type":               {"{\n  \"schema\": \"one\"\n}", "invalid patch metadata: line 2, column 17: field schema: string where int is wanted"},
		"cut short":          {good.String()[:40], "invalid patch metadata: line 3, column "},
		"empty":              {"", "invalid patch metadata: empty file"},
		"unknown field":      {`{"schema":1,"surprise":true}`, `invalid patch metadata: unknown field "surprise"`},
		"trailing data":      {good.String() + "\n{}\n", "data after the JSON object"},
	}
	for name, c := range cases {
		var first string
		for i := 0; i < 50; i++ {
			_, err := Decode(strings.NewReader(c.doc))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%s: %v, want ErrInvalid", name, err)
			}
			if i == 0 {
				first = err.Error()
				if !strings.Contains(first, c.want) {
					t.Errorf("%s: %q, want %q", name, first, c.want)
				}
			} else if err.Error() != first {
				t.Fatalf("%s: read %d says %q, read 1 said %q", name, i+1, err, first)
			}
		}
	}
}
