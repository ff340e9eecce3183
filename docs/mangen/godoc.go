package main

import (
	"fmt"
	"go/doc/comment"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
)

// packageDoc returns the doc comment of the Go package in dir.
func packageDoc(dir string) (string, error) {
	fset := token.NewFileSet()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, parser.ParseComments|parser.PackageClauseOnly)
		if err != nil {
			return "", err
		}
		if f.Doc != nil {
			return f.Doc.Text(), nil
		}
	}
	return "", fmt.Errorf("%s: no package doc comment", dir)
}

// renderDoc turns a package doc comment into the page: its headings become sections,
// its code blocks (the format tables) stay preformatted.
func renderDoc(p page, version, text string) []byte {
	var r roff
	r.header(p, version)
	var parser comment.Parser
	d := parser.Parse(text)
	r.line(".SH DESCRIPTION")
	for _, b := range d.Content {
		switch b := b.(type) {
		case *comment.Heading:
			r.line(".SH " + esc(strings.ToUpper(plain(b.Text))))
		case *comment.Paragraph:
			r.line(".PP")
			r.line(esc(strings.Join(strings.Fields(plain(b.Text)), " ")))
		case *comment.Code:
			r.line(".PP")
			r.line(".nf")
			for _, l := range strings.Split(strings.TrimRight(b.Text, "\n"), "\n") {
				r.line(esc(l))
			}
			r.line(".fi")
		case *comment.List:
			for _, it := range b.Items {
				r.line(".IP \\(bu 2")
				for _, c := range it.Content {
					if pp, ok := c.(*comment.Paragraph); ok {
						r.line(esc(strings.Join(strings.Fields(plain(pp.Text)), " ")))
					}
				}
			}
		}
	}
	r.footer(p)
	return r.Bytes()
}

// plain is the text of a doc comment's inline elements, links as their text.
func plain(ts []comment.Text) string {
	var b strings.Builder
	for _, t := range ts {
		switch t := t.(type) {
		case comment.Plain:
			b.WriteString(string(t))
		case comment.Italic:
			b.WriteString(string(t))
		case *comment.Link:
			b.WriteString(plain(t.Text))
		case *comment.DocLink:
			b.WriteString(plain(t.Text))
		}
	}
	return b.String()
}
