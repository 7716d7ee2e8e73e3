package restore

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/resp"
)

// dataDir writes a data dir as the proxy would hold it: a real empty RDB
// at offset 0, then the stream of the given commands.
func dataDir(t *testing.T, cmds ...[]string) string {
	t.Helper()
	src := redisproc.Start(t)
	if _, err := src.Do("SAVE"); err != nil {
		t.Fatal(err)
	}
	rdb, err := os.ReadFile(filepath.Join(src.Dir, "dump.rdb"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s, err := backlog.Open(dir, backlog.Options{
		Log:    backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: backlog.FsyncNo},
		Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w, err := s.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write(rdb)
	if err := s.Reset(backlog.RandomReplID(), 0, w); err != nil {
		t.Fatal(err)
	}
	var stream []byte
	for _, c := range cmds {
		stream = resp.AppendCommand(stream, c...)
	}
	if err := s.Append(stream); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A command the replay server refuses means its dataset is not the
// master's: the restore fails, with the server's log, rather than write it.
func TestRestoreFailsWhenTheServerRefusesACommand(t *testing.T) {
	dir := dataDir(t, []string{"SELECT", "0"}, []string{"SET", "k", "a"}, []string{"INCR", "k"}, []string{"SET", "j", "b"})
	out := filepath.Join(t.TempDir(), "dump.rdb")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := Run(ctx, Options{DataDir: dir, Out: out, Target: Target{Offset: 1 << 30}})
	if err == nil || !strings.Contains(err.Error(), "past the stored stream") {
		t.Fatalf("a target past the stream: %v", err)
	}
	res, err := Run(ctx, Options{DataDir: dir, Out: out, Target: Target{Before: "SET j"}})
	if err == nil || !strings.Contains(err.Error(), "the temporary server rejected 1 command(s) of the stream") || !strings.Contains(err.Error(), "value is not an integer") {
		t.Fatalf("restore over a refused INCR: %+v %v", res, err)
	}
	if _, statErr := os.Stat(out); statErr == nil {
		t.Fatalf("restore wrote %s after the server refused a command", out)
	}
}

// An interrupted restore (Ctrl-C) stops the temporary server, removes its
// files, writes nothing and leaves no goroutine behind, at any moment.
func TestInterruptedRestoreLeavesNothing(t *testing.T) {
	cmds := make([][]string, 0, 100000)
	for i := range 100000 {
		cmds = append(cmds, []string{"SET", "key:" + strconv.Itoa(i), strings.Repeat("v", 64)})
	}
	dir := dataDir(t, cmds...)
	before := runtime.NumGoroutine()
	meta, err := backlog.ReadExtent(backlog.Layout(dir).LogDir(1), 1)
	if err != nil {
		t.Fatal(err)
	}
	for i, after := range []time.Duration{0, 50 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second} {
		// By offset, the interrupt lands in the server's start or the
		// replay; by pattern, also in the search for the command.
		target := Target{Offset: meta.End - 1}
		if i%2 == 1 {
			target = Target{Before: "SET key:99999"}
		}
		tmp, out := t.TempDir(), filepath.Join(t.TempDir(), "dump.rdb")
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(after, cancel)
		start := time.Now()
		_, err := Run(ctx, Options{DataDir: dir, Out: out, TmpDir: tmp, Target: target})
		cancel()
		t.Logf("interrupted after %s: returned after %s: %v", after, time.Since(start).Round(time.Millisecond), err)
		if err == nil {
			t.Logf("the restore finished within %s", after)
			continue
		}
		if left, _ := os.ReadDir(tmp); len(left) != 0 {
			t.Errorf("interrupted after %s (%v): %d entries left in the temp dir", after, err, len(left))
		}
		if _, statErr := os.Stat(out); statErr == nil {
			t.Errorf("interrupted after %s (%v): %s written", after, err, out)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
