package backlog

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// rawSocketFile is the only file allowed raw system calls and unsafe: it
// makes them on non-blocking sockets only (the rule and its reason are
// written there). A raw call on a file can sleep in the kernel without the
// scheduler knowing; a GC that starts meanwhile then stops every goroutine
// until the disk answers (TestFrozenDiskKeepsServing in proxy).
const rawSocketFile = "internal/rawsock/rawsock.go"

// No build of the module makes a raw system call, or imports unsafe, outside
// that file: a file written raw once froze the whole process for as long as
// a disk stalled.
func TestNoRawSystemCallOnFiles(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	checked, sawRaw := 0, false
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		checked++
		raw := filepath.ToSlash(rel) == rawSocketFile
		sawRaw = sawRaw || raw
		for _, imp := range f.Imports {
			if imp.Path.Value == `"unsafe"` && !raw {
				t.Errorf("%s: imports unsafe outside %s", rel, rawSocketFile)
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if ok && strings.HasPrefix(sel.Sel.Name, "RawSyscall") && !raw {
				t.Errorf("%s: raw system call %s outside %s", rel, sel.Sel.Name, rawSocketFile)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !sawRaw {
		t.Errorf("%s not checked", rawSocketFile)
	}
	if checked < 50 {
		t.Fatalf("only %d source files checked from %s", checked, root)
	}
}
