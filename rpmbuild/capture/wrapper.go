package capture

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
)

// Environment of the wrapper.
const (
	// EnvDir names the capture directory (record log, depfiles, split objects).
	// The wrapper is active only when it is set.
	EnvDir = "SYSCARE_CAPTURE_DIR"
	// EnvCC and EnvCXX name the real C and C++ compilers the wrapper runs.
	EnvCC  = "SYSCARE_CAPTURE_CC"
	EnvCXX = "SYSCARE_CAPTURE_CXX"
	// EnvCCArgv0 and EnvCXXArgv0 are the argv[0] to give them: gcc finds cc1 and its
	// libraries relative to argv[0], so a compiler reached through a private bind path
	// must still be told its installed path.
	EnvCCArgv0  = "SYSCARE_CAPTURE_CC_ARGV0"
	EnvCXXArgv0 = "SYSCARE_CAPTURE_CXX_ARGV0"
)

// AddedFlags go at the end of every compile and link command: one section per function
// and per data object is what lets the differ compare and extract single functions,
// and DWARF is what the safety checks read.
var AddedFlags = []string{"-ffunction-sections", "-fdata-sections", "-gdwarf", "-fno-lto"}

var compilerName = regexp.MustCompile(`^([a-z0-9_]+-)*(cc|gcc|c\+\+|g\+\+)(-[0-9.]+)?$`)

// IsCompilerName reports whether a program name is one the wrapper stands in for.
func IsCompilerName(argv0 string) bool { return compilerName.MatchString(filepath.Base(argv0)) }

// IsWrapperCall reports whether this process was started as the compiler wrapper: under a
// compiler's name with a capture directory in the environment.
func IsWrapperCall(argv0 string) bool {
	return os.Getenv(EnvDir) != "" && IsCompilerName(argv0)
}

// Options that take their value as the next argument.
var separateArg = map[string]bool{
	"-o": true, "-I": true, "-D": true, "-U": true, "-include": true, "-imacros": true,
	"-isystem": true, "-idirafter": true, "-iquote": true, "-iprefix": true, "-iwithprefix": true,
	"-iwithprefixbefore": true, "-isysroot": true, "-imultilib": true, "-MF": true, "-MT": true,
	"-MQ": true, "-x": true, "-L": true, "-l": true, "-Xlinker": true, "-Xassembler": true,
	"-Xpreprocessor": true, "-T": true, "-u": true, "-z": true, "-e": true, "--param": true,
	"-aux-info": true, "-A": true, "-G": true, "-dumpbase": true, "-dumpdir": true,
}

// TakesValue reports whether a compiler option takes the next argument as its value
// ("-o", "-L", "-Xlinker", ...).
func TakesValue(flag string) bool { return separateArg[flag] }

var sourceExt = map[string]bool{
	".c": true, ".cc": true, ".cp": true, ".cpp": true, ".cxx": true, ".c++": true, ".C": true,
	".CPP": true, ".i": true, ".ii": true, ".s": true, ".S": true, ".sx": true,
}

// IsSource reports whether a file operand is a translation unit by its extension.
func IsSource(name string) bool { return sourceExt[filepath.Ext(name)] }

// Mode is what an invocation does.
type Mode int

// Modes of a compiler invocation.
const (
	// Other is anything the wrapper passes through untouched: -E, -S, -M, --version, ...
	Other Mode = iota
	// Compile is -c with at least one source.
	Compile
	// Link produces an executable, a shared library or a relocatable (maybe compiling sources first).
	Link
)

// Invocation is a parsed compiler command line.
type Invocation struct {
	Mode Mode
	// Args is the rewritten argument list (LTO off, capture flags appended).
	Args []string
	// Sources are the indexes in Args of translation-unit operands.
	Sources []int
	// Output is the -o value ("" if none).
	Output string
	// HasMD tells whether the command writes a depfile itself (-MD/-MMD), MF its -MF value.
	HasMD bool
	MF    string
	// Libs are -l names and LibDirs the -L directories, for resolving link inputs.
	Libs    []string
	LibDirs []string
}

// Parse classifies a compiler command line and rewrites its flags.
func Parse(args []string) Invocation {
	var inv Invocation
	var c, stop, operands, xlang bool
	for i := 0; i < len(args); i++ {
		a := args[i]
		if isLTO(a) {
			continue
		}
		inv.Args = append(inv.Args, a)
		switch {
		case a == "-c":
			c = true
		case a == "-E" || a == "-S" || a == "-M" || a == "-MM" || a == "-" ||
			strings.HasPrefix(a, "-print-") || strings.HasPrefix(a, "-dump") || a == "--version" || a == "-v" || a == "--help":
			stop = true
		case a == "-MD" || a == "-MMD":
			inv.HasMD = true
		case separateArg[a]:
			if i+1 < len(args) {
				i++
				inv.Args = append(inv.Args, args[i])
				switch a {
				case "-o":
					inv.Output = args[i]
				case "-MF":
					inv.MF = args[i]
				case "-x":
					xlang = args[i] != "none"
				case "-l":
					inv.Libs = append(inv.Libs, args[i])
				case "-L":
					inv.LibDirs = append(inv.LibDirs, args[i])
				}
			}
		case strings.HasPrefix(a, "-o") && len(a) > 2:
			inv.Output = a[2:]
		case strings.HasPrefix(a, "-l") && len(a) > 2:
			inv.Libs = append(inv.Libs, a[2:])
		case strings.HasPrefix(a, "-L") && len(a) > 2:
			inv.LibDirs = append(inv.LibDirs, a[2:])
		case strings.HasPrefix(a, "-"):
		default:
			operands = true
			if IsSource(a) {
				inv.Sources = append(inv.Sources, len(inv.Args)-1)
			}
		}
	}
	switch {
	case stop || !operands || xlang:
		// -x changes how operands are read: too rare to model, so pass it through.
		inv.Mode = Other
		inv.Args = append([]string(nil), args...)
		return inv
	case c && len(inv.Sources) > 0:
		inv.Mode = Compile
	case c:
		inv.Mode = Other
		inv.Args = append([]string(nil), args...)
		return inv
	default:
		inv.Mode = Link
	}
	inv.Args = append(inv.Args, AddedFlags...)
	return inv
}

func isLTO(a string) bool {
	return a == "-flto" || strings.HasPrefix(a, "-flto=") || a == "-ffat-lto-objects" ||
		a == "-fuse-linker-plugin" || strings.HasPrefix(a, "-flto-partition")
}

// CompileArgs returns the command that compiles the src-th source alone into obj.
func (inv Invocation) CompileArgs(src int, obj string) []string {
	var out []string
	skip := map[int]bool{}
	for _, s := range inv.Sources {
		if s != src {
			skip[s] = true
		}
	}
	for i := 0; i < len(inv.Args); i++ {
		a := inv.Args[i]
		switch {
		case skip[i]:
		case a == "-o":
			i++
		case strings.HasPrefix(a, "-o") && len(a) > 2:
		case a == "-c":
		default:
			out = append(out, a)
		}
	}
	return append(out, "-c", "-o", obj)
}

// objectFor is the object gcc -c names after a source when there is no -o.
func objectFor(src string) string {
	base := filepath.Base(src)
	return strings.TrimSuffix(base, filepath.Ext(base)) + ".o"
}

// RunWrapper is the whole wrapper process: it returns the exit status to use.
func RunWrapper(argv []string) int {
	if err := runWrapper(argv); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			return ee.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "syscare-build cc-wrapper: %v\n", err)
		return 1
	}
	return 0
}

func runWrapper(argv []string) error {
	dir := os.Getenv(EnvDir)
	lang, real, argv0 := "c", os.Getenv(EnvCC), os.Getenv(EnvCCArgv0)
	if strings.Contains(filepath.Base(argv[0]), "++") {
		lang, real, argv0 = "c++", os.Getenv(EnvCXX), os.Getenv(EnvCXXArgv0)
	}
	if argv0 == "" {
		argv0 = real
	}
	if real == "" {
		return fmt.Errorf("no real %s compiler in %s/%s", lang, EnvCC, EnvCXX)
	}
	inv := Parse(argv[1:])
	if inv.Mode != Other {
		inv.Args = append(inv.Args, strings.Fields(os.Getenv(envExtra))...)
	}
	if inv.Mode == Other {
		// Untouched, and the same process: stdin and signals behave as without the wrapper.
		return syscall.Exec(real, append([]string{argv0}, inv.Args...), os.Environ())
	}
	cwd, err := os.Getwd()
	if err != nil {
		return err
	}
	if inv.Mode == Compile {
		for _, s := range inv.Sources {
			obj := inv.Output
			if obj == "" || len(inv.Sources) > 1 {
				obj = objectFor(inv.Args[s])
			}
			if err := compileOne(dir, cwd, lang, real, argv0, inv, s, obj); err != nil {
				return err
			}
		}
		return nil
	}
	// A link that compiles sources too: compile each into the capture directory first, so
	// that every TU has an object the builder can diff, then link those objects.
	args := append([]string(nil), inv.Args...)
	for _, s := range inv.Sources {
		obj := filepath.Join(dir, "objs", randomName()+"-"+objectFor(inv.Args[s]))
		if err := os.MkdirAll(filepath.Dir(obj), 0o755); err != nil {
			return err
		}
		if err := compileOne(dir, cwd, lang, real, argv0, inv, s, obj); err != nil {
			return err
		}
		args[s] = obj
	}
	if err := run(real, argv0, args); err != nil {
		return err
	}
	out := inv.Output
	if out == "" {
		out = "a.out"
	}
	rec := Record{Kind: KindLink, Dir: cwd, Lang: lang, Args: args, Output: abs(cwd, out),
		Inputs: linkInputs(cwd, args, inv)}
	return appendRecord(dir, rec)
}

func compileOne(dir, cwd, lang, real, argv0 string, inv Invocation, src int, obj string) error {
	args := inv.CompileArgs(src, obj)
	if plainAssembler(inv.Args[src]) {
		// gcc runs no preprocessor on a .s file and so writes no depfile, even when
		// asked (-MD): the source is the unit's only input (perlasm output, say).
		if err := run(real, argv0, args); err != nil {
			return err
		}
		return appendRecord(dir, Record{Kind: KindCompile, Dir: cwd, Lang: lang, Args: args,
			Source: abs(cwd, inv.Args[src]), Object: abs(cwd, obj), Deps: []string{abs(cwd, inv.Args[src])}})
	}
	depfile := ""
	switch {
	case inv.HasMD && inv.MF != "" && len(inv.Sources) == 1:
		depfile = inv.MF
	case inv.HasMD:
		depfile = strings.TrimSuffix(obj, filepath.Ext(obj)) + ".d"
	default:
		if err := os.MkdirAll(filepath.Join(dir, "deps"), 0o755); err != nil {
			return err
		}
		depfile = filepath.Join(dir, "deps", randomName()+".d")
		args = append(args, "-MD", "-MF", depfile)
	}
	if err := run(real, argv0, args); err != nil {
		return err
	}
	deps, err := readDepfile(abs(cwd, depfile))
	if err != nil {
		return fmt.Errorf("depfile of %s: %w", inv.Args[src], err)
	}
	for i, d := range deps {
		deps[i] = abs(cwd, d)
	}
	return appendRecord(dir, Record{Kind: KindCompile, Dir: cwd, Lang: lang, Args: args,
		Source: abs(cwd, inv.Args[src]), Object: abs(cwd, obj), Deps: deps})
}

// plainAssembler tells whether gcc reads src as assembler without preprocessing (.s;
// .S and .sx go through the preprocessor and get a depfile).
func plainAssembler(src string) bool {
	return filepath.Ext(src) == ".s"
}

func run(prog, argv0 string, args []string) error {
	cmd := exec.Command(prog, args...)
	cmd.Args[0] = argv0
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	return cmd.Run()
}

// linkInputs lists the files a link reads: operands, and -l libraries found in -L dirs
// (only those: system libraries are not part of the package).
func linkInputs(cwd string, args []string, inv Invocation) []string {
	var in []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if separateArg[a] {
			i++
			continue
		}
		if strings.HasPrefix(a, "-") {
			continue
		}
		in = append(in, abs(cwd, a))
	}
	for _, l := range inv.Libs {
		if p := FindLib(cwd, l, inv.LibDirs); p != "" {
			in = append(in, p)
		}
	}
	return in
}

// FindLib returns the file a -l name resolves to in the -L directories dirs (relative
// to cwd), as the linker looks: lib<name>.so, then lib<name>.a, in each directory in
// order; -l:<file> names the file itself. "" if none is there (a system library: not
// part of the package).
func FindLib(cwd, name string, dirs []string) string {
	names := []string{"lib" + name + ".so", "lib" + name + ".a"}
	if strings.HasPrefix(name, ":") {
		names = []string{name[1:]}
	}
	for _, d := range dirs {
		for _, n := range names {
			p := abs(cwd, filepath.Join(d, n))
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	return ""
}

func abs(cwd, p string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(cwd, p)
}

func randomName() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// readDepfile returns the prerequisites of the rules in a make depfile.
func readDepfile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return ParseDepfile(string(b)), nil
}

// ParseDepfile returns the prerequisites of every rule of a gcc depfile, in order, once each.
func ParseDepfile(s string) []string {
	s = strings.ReplaceAll(s, "\\\r\n", " ")
	s = strings.ReplaceAll(s, "\\\n", " ")
	var out []string
	seen := map[string]bool{}
	for _, line := range strings.Split(s, "\n") {
		_, rhs, ok := cutRule(line)
		if !ok {
			continue
		}
		for _, w := range splitEscaped(rhs) {
			if !seen[w] {
				seen[w] = true
				out = append(out, w)
			}
		}
	}
	return out
}

// cutRule splits "target: prereqs" at the first colon that is not part of a drive or escape.
func cutRule(line string) (string, string, bool) {
	for i := 0; i < len(line); i++ {
		if line[i] == '\\' {
			i++
			continue
		}
		if line[i] == ':' && (i+1 == len(line) || line[i+1] == ' ' || line[i+1] == '\t') {
			return line[:i], line[i+1:], true
		}
	}
	return "", "", false
}

func splitEscaped(s string) []string {
	var out []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '\\' && i+1 < len(s) && (s[i+1] == ' ' || s[i+1] == '#'):
			cur.WriteByte(s[i+1])
			i++
		case ch == '$' && i+1 < len(s) && s[i+1] == '$':
			cur.WriteByte('$')
			i++
		case ch == ' ' || ch == '\t':
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteByte(ch)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
