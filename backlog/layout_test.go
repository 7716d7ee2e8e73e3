package backlog

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// dataDirNames are the names a data dir holds; only Layout spells them.
var dataDirNames = map[string]bool{
	"snapshot": true, "log": true, "meta.json": true, "damaged": true,
	"converted": true, "refresh.json": true, "LOCK": true,
}

// No production file outside layout.go builds a data dir path by hand: the
// store, verify, restore, inspect and the metrics all go through Layout,
// so the layout is described once.
func TestDataDirSpelledOnlyByLayout(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel == filepath.Join("backlog", "layout.go") || strings.HasPrefix(rel, "bench") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if sel, isSel := callee(call); !ok || !isSel || sel != "filepath.Join" {
				return true
			}
			for _, a := range call.Args {
				if lit, ok := a.(*ast.BasicLit); ok {
					if v, _ := strconv.Unquote(lit.Value); dataDirNames[v] {
						t.Errorf("%s: data dir path %q built by hand; use backlog.Layout", rel, v)
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func callee(call *ast.CallExpr) (string, bool) {
	if call == nil {
		return "", false
	}
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return "", false
	}
	pkg, ok := sel.X.(*ast.Ident)
	if !ok {
		return "", false
	}
	return pkg.Name + "." + sel.Sel.Name, true
}

// Everything a store writes in its data dir is a path Layout names: the
// meta, the lock, the refresh record, snapshots, and the current log
// generation's files.
func TestLayoutNamesWhatTheStoreWrites(t *testing.T) {
	dir := t.TempDir()
	at := Layout(dir)
	s := newStore(t, dir, testOptions(), 0)
	s.Append(pattern(2500, 1))
	adopt(t, s, 1000)
	if err := s.SaveRefreshRecord(RefreshRecord{Failures: 1}); err != nil {
		t.Fatal(err)
	}
	st := s.State()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{dir: true, at.Meta(): true, at.Lock(): true, at.Refresh(): true,
		at.Snapshots(): true, at.Snapshot(st.Snapshot.File): true, at.Logs(): true, at.LogDir(st.Epoch): true,
		at.Damaged(): true}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || named[path] || filepath.Dir(path) == at.LogDir(st.Epoch) {
			return err
		}
		t.Errorf("%s is in the data dir, but Layout does not name it", path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{at.Meta(), at.Lock(), at.Refresh(), at.Snapshot(st.Snapshot.File), at.LogDir(st.Epoch)} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("Layout names %s, which the store did not write: %v", p, err)
		}
	}
}
