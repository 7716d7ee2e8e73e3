package backlog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// syncedSizes records, per file, its size at its last successful fsync: the
// bytes known to be on disk.
type syncedSizes struct {
	mu sync.Mutex
	at map[string]int64
}

func (s *syncedSizes) sync(f *os.File) error {
	if err := f.Sync(); err != nil {
		return err
	}
	info, err := f.Stat()
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.at == nil {
		s.at = map[string]int64{}
	}
	s.at[filepath.Base(f.Name())] = info.Size()
	return nil
}

func (s *syncedSizes) of(path string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.at[filepath.Base(path)]
}

// A cut at damage found in the newest segment keeps the rolled segments
// before it. If their fsync was still pending (the syncer had not woken since
// the roll), it must still happen before durable passes their bytes.
func TestCutSyncsPendingRolledSegments(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	var synced syncedSizes
	l, err := OpenLog(logDir, 1, logOptions(dir, synced.sync, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	manualSyncs(l) // the cut lands before the syncer wakes for the rolls
	data := pattern(3000, 9)
	if err := l.Append(data[:2500]); err != nil { // segments 1 and 1001 rolled, 2001 active
		t.Fatal(err)
	}
	flipByte(t, segmentPath(logDir, 2001), 10)
	c, err := l.NewCursor(2001)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Send(&bytes.Buffer{}, 1<<20); !errors.Is(err, ErrDamaged) {
		t.Fatalf("send from the flipped segment: %v, want ErrDamaged", err)
	}
	if _, end := l.Bounds(); end != 2001 {
		t.Fatalf("log ends at %d, want the cut at 2001", end)
	}
	l.SyncNow()
	d := l.Durable()
	for _, first := range []int64{1, 1001} {
		path := segmentPath(logDir, first)
		if end := first + synced.of(path); d > first && end < min(d, first+1000) {
			t.Fatalf("durable %d, but segment %d was fsynced only up to %d", d, first, end)
		}
	}
	if d != 2001 {
		t.Fatalf("durable %d after a good fsync of everything kept, want 2001", d)
	}
	l.Resume()
	if err := l.Append(data[2000:]); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, l, 1); !bytes.Equal(got, data) {
		t.Fatal("the log after the cut and the resend differs from the stream")
	}
}

// When the cut after a failed fsync cannot finish (the disk keeps failing),
// nothing is appended while it stays unfinished, but the bytes up to the
// durable offset are on disk and unchanged: replicas keep being served them.
func TestFailedCutStillServesDurableBytes(t *testing.T) {
	var fail atomic.Bool
	l := openFailingLog(t, &fail)
	data := pattern(800, 4)
	if err := l.Append(data[:500]); err != nil {
		t.Fatal(err)
	}
	l.SyncNow()
	if err := l.Append(data[500:]); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	l.SyncNow() // fails, and so does the fsync of the truncated segment in the cut
	if err := l.Append([]byte("x")); err == nil || errors.Is(err, ErrRewound) {
		t.Fatalf("append after a failed cut: %v, want the cut's error", err)
	}
	if first, end := l.Bounds(); first != 1 || end != 501 {
		t.Fatalf("bounds [%d, %d) after the failed cut, want [1, 501)", first, end)
	}
	if got := readAll(t, l, 1); !bytes.Equal(got, data[:500]) {
		t.Fatalf("served %d bytes after the failed cut, want the 500 durable ones", len(got))
	}
}

// openFilesNamed counts this process's descriptors open on a file whose
// name contains name (removed files included).
func openFilesNamed(t *testing.T, name string) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.Contains(target, name) {
			n++
		}
	}
	return n
}

// A segment rolled between a failed fsync and the cut that follows it must
// still be closed: a syncer pass that sees the failure pending must leave
// it queued, not drop it with its descriptors open.
func TestSegmentRolledBeforeTheCutIsClosed(t *testing.T) {
	var fail atomic.Bool
	l := openFailingLog(t, &fail)
	if err := l.Append(pattern(1500, 6)); err != nil {
		t.Fatal(err)
	}
	l.SyncNow()
	if err := l.Append(pattern(500, 7)); err != nil { // 1001 is full, rolled at the next append
		t.Fatal(err)
	}
	// Hold the writer's lock, as an Append in progress does, so the cut
	// after the failed fsync waits; meanwhile that Append rolls, and the
	// syncer runs again.
	l.wmu.Lock()
	fail.Store(true)
	cutDone := make(chan struct{})
	go func() { l.SyncNow(); close(cutDone) }()
	redisprocEventually(t, "the failed fsync", func() bool {
		l.syncer.mu.Lock()
		defer l.syncer.mu.Unlock()
		return l.syncer.failed
	})
	fail.Store(false)
	if _, err := l.roll(); err != nil {
		l.wmu.Unlock()
		t.Fatal(err)
	}
	l.SyncNow()
	l.wmu.Unlock()
	<-cutDone
	if _, end := l.Bounds(); end != 1501 {
		t.Fatalf("log ends at %d after the cut, want 1501", end)
	}
	// Segment 1001 was truncated at 1501 and is the active one again: its
	// data file and index are open once, by the log.
	if n := openFilesNamed(t, fmt.Sprintf("%020d", 1001)); n != 2 {
		t.Fatalf("%d descriptors open on segment 1001 after the cut, want 2 (the active segment's)", n)
	}
}

// gateWriter blocks the log line containing match until release is closed,
// and reports through reached when it got there.
type gateWriter struct {
	match   string
	reached chan struct{}
	release chan struct{}
	once    sync.Once
}

func (g *gateWriter) Write(p []byte) (int, error) {
	if strings.Contains(string(p), g.match) {
		g.once.Do(func() { close(g.reached) })
		<-g.release
	}
	return len(p), nil
}

// A cut for damage found past the durable offset, landing between a failed
// fsync and the cut back that follows it, must not end the failure
// episode: the bytes the failed fsync covered stay unacknowledged, and a
// later good fsync (which may succeed after the kernel dropped the pages)
// must not make them durable.
func TestDamageCutDuringFsyncFailureKeepsItPending(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	var fail atomic.Bool
	gate := &gateWriter{match: "fsync failed", reached: make(chan struct{}), release: make(chan struct{})}
	l, err := OpenLog(logDir, 1, logOptions(dir, failingSync(&fail, ".seg"), gate))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	defer func() {
		select {
		case <-gate.release:
		default:
			close(gate.release)
		}
	}()
	manualSyncs(l)
	data := pattern(2200, 8)
	if err := l.Append(data[:1700]); err != nil { // segment 1 rolled, 1001 active
		t.Fatal(err)
	}
	l.SyncNow()
	if err := l.Append(data[1700:]); err != nil { // 1001 rolled, 2001 active
		t.Fatal(err)
	}
	fail.Store(true)
	synced := make(chan struct{})
	go func() { l.SyncNow(); close(synced) }() // segment 1001 fails; its cut waits at the log line
	<-gate.reached
	fail.Store(false)
	flipByte(t, segmentPath(logDir, 2001), 5)
	c, err := l.NewCursor(2001)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Send(&bytes.Buffer{}, 1<<20); !errors.Is(err, ErrDamaged) {
		t.Fatalf("send from the flipped segment: %v, want ErrDamaged", err)
	}
	l.SyncNow()
	if d := l.Durable(); d > 1701 {
		t.Fatalf("durable %d, although the fsync of bytes 1701..2001 failed", d)
	}
	close(gate.release)
	<-synced
	if _, end := l.Bounds(); end != 1701 {
		t.Fatalf("log ends at %d, want it cut back to the durable 1701", end)
	}
	l.Resume()
	if err := l.Append(data[1700:]); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, l, 1); !bytes.Equal(got, data) {
		t.Fatal("the log after the cuts and the resend differs from the stream")
	}
}

// A cut whose file work fails (here: damaged/ cannot be created, as on a
// full disk) stops appends, but not for good: once the disk is back, the
// writer's next resume finishes the cut and the stream continues, as the
// README promises for a full disk.
func TestFailedCutFinishedAtResume(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	blocker := filepath.Join(dir, "full")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	opt := logOptions(dir, nil, nil)
	opt.DamagedDir = filepath.Join(blocker, "damaged") // not creatable while blocker is a file
	l, err := OpenLog(logDir, 1, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	data := pattern(3500, 3)
	if err := l.Append(data[:2500]); err != nil {
		t.Fatal(err)
	}
	flipByte(t, segmentPath(logDir, 1001), 7)
	c, err := l.NewCursor(1001)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Send(&bytes.Buffer{}, 1<<20); !errors.Is(err, ErrDamaged) {
		t.Fatalf("send from the flipped segment: %v, want ErrDamaged", err)
	}
	l.Resume()
	if err := l.Append(data[1000:1100]); err == nil || errors.Is(err, ErrRewound) {
		t.Fatalf("append while the cut cannot finish: %v, want the cut's error", err)
	}
	if got := readAll(t, l, 1); !bytes.Equal(got, data[:1000]) {
		t.Fatalf("served %d bytes while the cut is unfinished, want the 1000 before the damage", len(got))
	}
	if err := os.Remove(blocker); err != nil { // the disk is back
		t.Fatal(err)
	}
	l.Resume()
	if err := l.Append(data[1000:]); err != nil {
		t.Fatalf("append after the disk came back: %v", err)
	}
	if got := readAll(t, l, 1); !bytes.Equal(got, data) {
		t.Fatal("the log after the finished cut and the resend differs from the stream")
	}
	moved, _ := filepath.Glob(filepath.Join(opt.DamagedDir, "*", "*.seg"))
	if len(moved) != 2 {
		t.Fatalf("moved aside: %v, want the damaged segment 1001 and 2001 after it", moved)
	}
}

// openFailingLog is a log in a temp dir whose segment fsyncs fail while
// fail is set, synced only by hand (manualSyncs), closed when t ends.
func openFailingLog(t *testing.T, fail *atomic.Bool) *Log {
	t.Helper()
	dir := t.TempDir()
	l, err := OpenLog(filepath.Join(dir, "log"), 1, logOptions(dir, failingSync(fail, ".seg"), nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	manualSyncs(l)
	return l
}

// An append that waits for a cut holding the writer's lock on a disk that
// does not answer (a cut follows a failed fsync: a sick disk) is stuck on
// the disk too: AppendStuck counts its wait, so /readyz says so.
func TestAppendWaitingForACutIsStuck(t *testing.T) {
	s := newStore(t, t.TempDir(), testOptions(), 0)
	l := s.Log()
	l.wmu.Lock() // a cut in progress, its truncate or fsync not answered
	done := make(chan error, 1)
	go func() { done <- l.Append([]byte("x")) }()
	time.Sleep(300 * time.Millisecond)
	stuck := l.AppendStuck(time.Now())
	l.wmu.Unlock()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if stuck < 200*time.Millisecond {
		t.Fatalf("an append waiting 300 ms behind a cut reported stuck for %s", stuck)
	}
	if got := l.AppendStuck(time.Now()); got != 0 {
		t.Fatalf("stuck for %s after the append returned", got)
	}
}
