package browsertest

import (
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The page's calls hold to the bus contract: every method it calls exists in
// dbus/org.openeuler.SysCare1.xml with the input signature the page sends (cockpit.dbus
// marshals by the signature the page gives, so a drift would fail only at run time), and
// the signal it follows exists. Quick, and in `make test`, unlike the browser test.

type introspection struct {
	Interfaces []struct {
		Name    string `xml:"name,attr"`
		Methods []struct {
			Name string `xml:"name,attr"`
			Args []struct {
				Type      string `xml:"type,attr"`
				Direction string `xml:"direction,attr"`
			} `xml:"arg"`
		} `xml:"method"`
		Signals []struct {
			Name string `xml:"name,attr"`
		} `xml:"signal"`
	} `xml:"interface"`
}

func readFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// contract returns the input signature of each method and the signals of the interface.
func contract(t *testing.T) (map[string]string, map[string]bool) {
	var node introspection
	if err := xml.Unmarshal([]byte(readFile(t, "dbus/org.openeuler.SysCare1.xml")), &node); err != nil {
		t.Fatal(err)
	}
	methods, signals := map[string]string{}, map[string]bool{}
	for _, i := range node.Interfaces {
		if i.Name != "org.openeuler.SysCare1.Manager" {
			continue
		}
		for _, m := range i.Methods {
			sig := ""
			for _, a := range m.Args {
				if a.Direction != "out" {
					sig += a.Type
				}
			}
			methods[m.Name] = sig
		}
		for _, s := range i.Signals {
			signals[s.Name] = true
		}
	}
	if len(methods) == 0 {
		t.Fatal("no methods in the contract")
	}
	return methods, signals
}

func TestPageCallsMatchContract(t *testing.T) {
	methods, signals := contract(t)
	js := readFile(t, "cockpit/syscare.js")
	if !strings.Contains(js, `const IFACE = "org.openeuler.SysCare1.Manager"`) || !strings.Contains(js, `const BUS_NAME = "org.openeuler.SysCare1"`) {
		t.Error("the page names another bus name or interface than the contract")
	}
	// Calls with a literal method name: call("List", [], "").
	literal := regexp.MustCompile(`call\("(\w+)", .*, "([^"]*)"\)`)
	calls := literal.FindAllStringSubmatch(js, -1)
	for _, c := range calls {
		want, ok := methods[c[1]]
		if !ok {
			t.Errorf("the page calls %s, which the contract lacks", c[1])
		} else if want != c[2] {
			t.Errorf("the page calls %s with signature %q, the contract says %q", c[1], c[2], want)
		}
	}
	// The row actions: every method named in ACTIONS is called with "asb".
	block := regexp.MustCompile(`(?s)const ACTIONS = \{(.*?)\};`).FindStringSubmatch(js)
	if block == nil || !strings.Contains(js, `call(method, [[uuid], false], "asb")`) {
		t.Fatal("the page's row actions are not where this test looks for them")
	}
	actions := regexp.MustCompile(`"([A-Z]\w+)"`).FindAllStringSubmatch(block[1], -1)
	for _, a := range actions {
		if want, ok := methods[a[1]]; !ok || want != "asb" {
			t.Errorf("row action %s: contract signature %q (present %v), the page sends asb", a[1], want, ok)
		}
	}
	if len(calls) < 5 || len(actions) < 5 {
		t.Errorf("found %d literal calls and %d actions: the page's calls moved", len(calls), len(actions))
	}
	for _, m := range regexp.MustCompile(`member: "(\w+)"`).FindAllStringSubmatch(js, -1) {
		if !signals[m[1]] {
			t.Errorf("the page follows signal %s, which the contract lacks", m[1])
		}
	}
}

// The package is what Cockpit loads: a valid manifest whose tool page exists, and a page
// that loads Cockpit's API from base1 and its own files.
func TestPackageFiles(t *testing.T) {
	var manifest struct {
		Tools map[string]struct {
			Label string `json:"label"`
			Path  string `json:"path"`
		} `json:"tools"`
	}
	if err := json.Unmarshal([]byte(readFile(t, "cockpit/manifest.json")), &manifest); err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if len(manifest.Tools) != 1 {
		t.Fatalf("manifest tools: %v", manifest.Tools)
	}
	for id, tool := range manifest.Tools {
		page := tool.Path
		if page == "" {
			page = id + ".html" // Cockpit's default for a tool without a path
		}
		if _, err := os.Stat(filepath.Join("..", page)); err != nil || tool.Label == "" {
			t.Errorf("tool %q: label %q, page %s: %v", id, tool.Label, page, err)
		}
	}
	html := readFile(t, "cockpit/index.html")
	for _, ref := range []string{`src="../base1/cockpit.js"`, `src="syscare.js"`, `href="syscare.css"`} {
		if !strings.Contains(html, ref) {
			t.Errorf("index.html lacks %s", ref)
		}
	}
	for _, f := range []string{"syscare.js", "syscare.css", "README.md"} {
		if _, err := os.Stat(filepath.Join("..", f)); err != nil {
			t.Error(err)
		}
	}
}
