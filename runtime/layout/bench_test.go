package layout

import (
	"fmt"
	"strings"
	"testing"

	"github.com/syscare/syscare/runtime/patchobj"
)

// tenFuncs is a 10-function patch: each calls printf and a static helper,
// touches a target global and a string literal.
func tenFuncs() string {
	var b strings.Builder
	b.WriteString("#include <upatch.h>\n#include <stdio.h>\nextern int counter;\n")
	b.WriteString("static __attribute__((noipa)) int helper(int x) { return x * 3; }\n")
	for i := 0; i < 10; i++ {
		fmt.Fprintf(&b, "int f%d_v2(int x) { counter += %d; printf(\"f%d %%d\\n\", x); return helper(x) + %d; }\n", i, i, i, i)
		fmt.Fprintf(&b, "UPATCH_FUNC(f%d, f%d_v2);\n", i, i)
	}
	return b.String()
}

func BenchmarkPlan10(b *testing.B) {
	o, err := patchobj.ParseBytes(buildObject(b, tenFuncs(), "-fpie"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := NewPlan(o); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLink10(b *testing.B) {
	o, err := patchobj.ParseBytes(buildObject(b, tenFuncs(), "-fpie"))
	if err != nil {
		b.Fatal(err)
	}
	p, err := NewPlan(o)
	if err != nil {
		b.Fatal(err)
	}
	base := uint64(0x7f0000000000)
	r := targetNear(base - 64*mib)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		img, err := p.Link(base, r)
		if err != nil {
			b.Fatal(err)
		}
		if len(img.Funcs) != 10 {
			b.Fatalf("%d funcs", len(img.Funcs))
		}
	}
}
