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

// socketRawCalls are the only files allowed raw system calls: each makes
// them on a non-blocking socket only (the rule and its reason are written
// there). A raw call on a file can sleep in the kernel without the
// scheduler knowing; a GC that starts meanwhile then stops every goroutine
// until the disk answers (TestFrozenDiskKeepsServing in proxy).
var socketRawCalls = map[string]bool{
	"proxy/ingest_socket.go": true,
	"fanout/follow.go":       true,
}

// No build of the module makes a raw system call outside those files: a
// file written raw once froze the whole process for as long as a disk
// stalled.
func TestNoRawSystemCallOnFiles(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
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
		ast.Inspect(f, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if ok && strings.HasPrefix(sel.Sel.Name, "RawSyscall") && !socketRawCalls[filepath.ToSlash(rel)] {
				t.Errorf("%s: raw system call %s outside the socket files", rel, sel.Sel.Name)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("only %d source files checked from %s", checked, root)
	}
}
