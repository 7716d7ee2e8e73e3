package backlog

import (
	"go/ast"
	"go/importer"
	"go/parser"
	"go/token"
	"go/types"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// lockRank is the lock order of doc.go: a lock may be taken only while
// every lock held ranks lower. The leaves share a rank, so none is taken
// under another.
var lockRank = map[string]int{
	"Store.writeMu": 0, "Log.wmu": 1, "Store.mu": 2, "syncer.syncMu": 3, "followers.mu": 4, "Log.mu": 5,
	"syncer.mu": 6, "timeIndex.mu": 6, "timeIndex.fmu": 6, "Log.culpritMu": 6, "damagedArea.mu": 6, "Store.snapMu": 6,
}

// funcFields are the function-valued options the package calls, and what
// Store sets them to (Open).
var funcFields = map[string]string{"Hold": "(*Store).snapshotNeeds", "OnTrim": "(*Store).pruneHistory"}

// Every lock the package takes, directly or through the functions it
// calls, is taken in the order of doc.go. The walk is by source order
// within a function (a lock released on an early return counts as
// released after it), so it can miss an inversion, never invent one.
func TestLockOrderOfTheSource(t *testing.T) {
	lc := loadLocks(t)
	for name := range lc.direct {
		for _, l := range lc.direct[name] {
			if _, ok := lockRank[l]; !ok {
				t.Errorf("%s takes %s, which doc.go's lock order does not name", name, l)
			}
		}
	}
	for _, v := range lc.violations() {
		t.Error(v)
	}
	if n := len(lc.takes("(*Store).Close", map[string]bool{})); n < 8 {
		t.Errorf("Store.Close is seen to take %d locks: the walk does not follow calls", n)
	}
}

type lockCheck struct {
	info   *types.Info
	funcs  map[string]*ast.FuncDecl
	direct map[string][]string // locks a function takes itself
	calls  map[string][]string // functions of the package it calls
	bad    []string
}

func loadLocks(t *testing.T) *lockCheck {
	t.Helper()
	fset := token.NewFileSet()
	paths, _ := filepath.Glob("*.go")
	var files []*ast.File
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	lc := &lockCheck{info: &types.Info{Defs: map[*ast.Ident]types.Object{}, Uses: map[*ast.Ident]types.Object{}, Selections: map[*ast.SelectorExpr]*types.Selection{}, Types: map[ast.Expr]types.TypeAndValue{}},
		funcs: map[string]*ast.FuncDecl{}, direct: map[string][]string{}, calls: map[string][]string{}}
	conf := types.Config{Importer: importer.ForCompiler(fset, "source", nil), Error: func(error) {}}
	if _, err := conf.Check("backlog", fset, files, lc.info); err != nil {
		t.Fatalf("type-check backlog: %v", err)
	}
	for _, f := range files {
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Body != nil {
				lc.funcs[lc.funcName(fd)] = fd
			}
		}
	}
	for name, fd := range lc.funcs {
		lc.walk(name, fd.Body, nil, false)
	}
	return lc
}

func (lc *lockCheck) funcName(fd *ast.FuncDecl) string {
	return strings.ReplaceAll(lc.info.Defs[fd.Name].(*types.Func).FullName(), "backlog.", "")
}

// walk follows body in source order with held taken; check says whether
// to report (the second pass, once every function's locks are known).
func (lc *lockCheck) walk(fn string, body ast.Node, held []string, check bool) []string {
	ast.Inspect(body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.GoStmt:
			return false // another goroutine holds nothing of ours
		case *ast.DeferStmt:
			// Runs at return, under what was held when it was deferred.
			if lock, op := lc.lockCall(n.Call); lock != "" && (op == "Unlock" || op == "RUnlock") {
				return false
			}
			lc.walk(fn, n.Call, append([]string(nil), held...), check)
			return false
		case *ast.CallExpr:
			lock, op := lc.lockCall(n)
			switch op {
			case "Lock", "RLock":
				if check {
					lc.order(fn, held, lock, lock)
				} else {
					lc.direct[fn] = append(lc.direct[fn], lock)
				}
				held = append(held, lock)
			case "TryLock":
				held = append(held, lock) // never waits: no order to keep
			case "Unlock", "RUnlock":
				for i := len(held) - 1; i >= 0; i-- {
					if held[i] == lock {
						held = append(held[:i:i], held[i+1:]...)
						break
					}
				}
			case "":
				if callee := lc.callee(n); callee != "" {
					if check {
						for _, l := range lc.takes(callee, map[string]bool{}) {
							lc.order(fn, held, l, callee)
						}
					} else {
						lc.calls[fn] = append(lc.calls[fn], callee)
					}
				}
			}
		}
		return true
	})
	return held
}

func (lc *lockCheck) order(fn string, held []string, lock, via string) {
	for _, h := range held {
		if lockRank[h] >= lockRank[lock] {
			lc.bad = append(lc.bad, fn+": takes "+lock+" (via "+via+") while holding "+h)
		}
	}
}

// lockCall names the mutex a call locks or unlocks: the type that holds it
// and its field (l.syncer.mu is syncer.mu).
func (lc *lockCheck) lockCall(call *ast.CallExpr) (lock, op string) {
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return "", ""
	}
	switch sel.Sel.Name {
	case "Lock", "RLock", "Unlock", "RUnlock", "TryLock":
	default:
		return "", ""
	}
	field, ok := sel.X.(*ast.SelectorExpr)
	if !ok {
		return "", ""
	}
	owner := lc.info.Types[field.X].Type
	if owner == nil {
		return "", ""
	}
	if p, ok := owner.(*types.Pointer); ok {
		owner = p.Elem()
	}
	named, ok := owner.(*types.Named)
	if !ok {
		return "", ""
	}
	return named.Obj().Name() + "." + field.Sel.Name, sel.Sel.Name
}

// callee names the function of this package a call runs, if known.
func (lc *lockCheck) callee(call *ast.CallExpr) string {
	var id *ast.Ident
	switch f := call.Fun.(type) {
	case *ast.Ident:
		id = f
	case *ast.SelectorExpr:
		id = f.Sel
		if name, ok := funcFields[f.Sel.Name]; ok {
			return name
		}
	}
	if id == nil {
		return ""
	}
	fn, ok := lc.info.Uses[id].(*types.Func)
	if !ok || fn.Pkg() == nil || fn.Pkg().Path() != "backlog" {
		return ""
	}
	return strings.ReplaceAll(fn.FullName(), "backlog.", "")
}

// takes lists every lock fn may take, itself or through its callees.
func (lc *lockCheck) takes(fn string, seen map[string]bool) []string {
	if seen[fn] {
		return nil
	}
	seen[fn] = true
	locks := append([]string(nil), lc.direct[fn]...)
	for _, c := range lc.calls[fn] {
		locks = append(locks, lc.takes(c, seen)...)
	}
	return locks
}

func (lc *lockCheck) violations() []string {
	names := make([]string, 0, len(lc.funcs))
	for name := range lc.funcs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		lc.walk(name, lc.funcs[name].Body, nil, true)
	}
	return lc.bad
}
