package redisproc

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// TB is what the harness needs from the owner of its servers: a test
// (testing.TB satisfies it) or a program (Program).
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
	Failed() bool
}

// Program owns servers started by a program rather than a test, such as
// the bench scenarios. Fatalf panics, and Try turns that back into an
// error; Close runs the cleanups, last registered first; TempDir makes
// numbered directories under one root; waits end when ctx does.
type Program struct {
	ctx  context.Context
	root string
	log  io.Writer

	mu       sync.Mutex
	cleanups []func()
	failed   bool
	dirs     int
}

// NewProgram returns an owner whose directories go under root (which it
// does not remove) and whose Logf writes to log.
func NewProgram(ctx context.Context, root string, log io.Writer) *Program {
	return &Program{ctx: ctx, root: root, log: log}
}

// fatal carries a Fatalf from the failing call up to Try.
type fatal struct{ err error }

// Try runs f and returns the error of a Fatalf inside it, so that a
// program's functions can return an error where a test would stop. It
// must run in the goroutine that calls the harness; other panics pass.
func (p *Program) Try(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			ft, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = ft.err
		}
	}()
	f()
	return nil
}

func (p *Program) Helper() {}

func (p *Program) Fatalf(format string, args ...any) {
	p.mu.Lock()
	p.failed = true
	p.mu.Unlock()
	panic(fatal{fmt.Errorf(format, args...)})
}

func (p *Program) Logf(format string, args ...any) { fmt.Fprintf(p.log, format+"\n", args...) }

func (p *Program) Cleanup(f func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cleanups = append(p.cleanups, f)
}

// Failed says whether a Fatalf happened: cleanups then print the servers'
// logs, as they do for a failed test.
func (p *Program) Failed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.failed
}

func (p *Program) TempDir() string {
	p.mu.Lock()
	p.dirs++
	dir := filepath.Join(p.root, fmt.Sprintf("%03d", p.dirs))
	p.mu.Unlock()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.Fatalf("redisproc: %v", err)
	}
	return dir
}

// Close runs the cleanups registered so far, last first; the Program can
// be used again afterwards.
func (p *Program) Close() {
	for {
		p.mu.Lock()
		n := len(p.cleanups)
		if n == 0 {
			p.mu.Unlock()
			return
		}
		f := p.cleanups[n-1]
		p.cleanups = p.cleanups[:n-1]
		p.mu.Unlock()
		f()
	}
}

// interrupted is closed when the owner gives up waiting: a Program's
// context. A test has none here, since t.Context ends before cleanups
// that may still wait.
func interrupted(t TB) <-chan struct{} {
	if p, ok := t.(*Program); ok {
		return p.ctx.Done()
	}
	return nil
}
