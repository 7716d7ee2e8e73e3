package backlog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// logBuffer collects log lines written from several goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func logOptions(dir string, sync SyncFunc, logs io.Writer) LogOptions {
	if logs == nil {
		logs = io.Discard
	}
	return LogOptions{SegmentBytes: 1000, MaxBytes: 1 << 30, Fsync: FsyncEverySec, Sync: sync,
		DamagedDir: filepath.Join(dir, "damaged"), Logger: zerolog.New(logs)}
}

// manualSyncs stops the syncer's own goroutine: fsyncs then happen only at
// SyncNow, so a test decides when each one runs.
func manualSyncs(l *Log) {
	l.syncer.mu.Lock()
	l.syncer.stopped = true
	l.syncer.mu.Unlock()
	l.syncer.poke()
	<-l.syncer.done
}

func failingSync(fail *atomic.Bool, suffix string) SyncFunc {
	return func(f *os.File) error {
		if fail.Load() && strings.HasSuffix(f.Name(), suffix) {
			return fmt.Errorf("fsync %s: injected EIO", f.Name())
		}
		return f.Sync()
	}
}

// Issue 8, point 1 (unit): a rolled segment whose fsync fails is never
// counted durable, not even by a later good fsync of the active segment.
// The log is cut back to the last durable byte and the writer must resume
// from there, as the upstream link does with a PSYNC.
func TestFailedFsyncIsNeverAcknowledged(t *testing.T) {
	dir := t.TempDir()
	var fail atomic.Bool
	logs := &logBuffer{}
	l, err := OpenLog(filepath.Join(dir, "log"), 1, logOptions(dir, failingSync(&fail, fmt.Sprintf("%020d.seg", 1)), logs))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	manualSyncs(l)
	if err := l.Append(pattern(1000, 1)); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	if err := l.Append(pattern(500, 2)); err != nil { // rolls: segment 1 is retired
		t.Fatal(err)
	}
	l.SyncNow() // the fsync of segment 1 fails
	l.SyncNow() // a good fsync of the active segment must not move durable past it
	if d := l.Durable(); d != 1 {
		t.Fatalf("durable %d although the segment holding bytes 1..1000 failed its fsync", d)
	}
	if _, end := l.Bounds(); end != 1 {
		t.Fatalf("log ends at %d after the failed fsync, want it cut back to the durable offset 1", end)
	}
	select {
	case <-l.Rewound():
	default:
		t.Fatal("the writer was not told to resume")
	}
	if err := l.Append([]byte("stale session")); !errors.Is(err, ErrRewound) {
		t.Fatalf("append before resuming: %v, want ErrRewound", err)
	}
	if !strings.Contains(logs.String(), "resumes with PSYNC") || !strings.Contains(logs.String(), `"level":"error"`) {
		t.Fatalf("the failure is not logged truthfully at error level:\n%s", logs.String())
	}
	fail.Store(false)
	l.Resume()
	data := pattern(1500, 3)
	if err := l.Append(data); err != nil {
		t.Fatal(err)
	}
	l.SyncNow()
	if d := l.Durable(); d != 1501 {
		t.Fatalf("durable %d after a good fsync, want 1501", d)
	}
	if got := readAll(t, l, 1); !bytes.Equal(got, data) {
		t.Fatal("the log after the cut does not hold the resent bytes")
	}
}

// Issue 8, point 2 (unit): after a kill -9, what recovery keeps counts as
// durable only once it is fsynced: segments, indexes and the directory are
// synced before OpenLog returns, so before the first ACK can be sent.
func TestRecoveredBytesSyncedBeforeDurable(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	opt := logOptions(dir, nil, nil)
	opt.Fsync = FsyncNo // nothing fsynced while writing, as in the page cache at a kill -9
	l, err := OpenLog(logDir, 1, opt)
	if err != nil {
		t.Fatal(err)
	}
	l.Append(pattern(2500, 1))
	l.Close()

	var mu sync.Mutex
	synced := map[string]bool{}
	opt.Sync = func(f *os.File) error {
		mu.Lock()
		synced[filepath.Base(f.Name())] = true
		mu.Unlock()
		return f.Sync()
	}
	opt.Fsync = FsyncEverySec
	l, err = OpenLog(logDir, 1, opt)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	for _, first := range []int64{1, 1001, 2001} {
		seg := filepath.Base(segmentPath(logDir, first))
		if !synced[seg] || !synced[filepath.Base(indexPath(seg))] {
			t.Errorf("recovered segment %s or its index not fsynced before durable reached %d (synced: %v)", seg, l.Durable(), synced)
		}
	}
	if !synced["log"] {
		t.Errorf("log directory not fsynced after recovery (synced: %v)", synced)
	}
	mu.Unlock()
	if l.Durable() != 2501 {
		t.Fatalf("durable %d, want 2501", l.Durable())
	}
	l.Close()

	// An fsync that fails at recovery stops the open: nothing is acknowledged.
	var fail atomic.Bool
	fail.Store(true)
	opt.Sync = failingSync(&fail, ".seg")
	if l, err := OpenLog(logDir, 1, opt); err == nil || !strings.Contains(err.Error(), "injected EIO") {
		if l != nil {
			l.Close()
		}
		t.Fatalf("open with failing fsync: %v", err)
	}
}

// Issue 8, point 3 (unit): the sealed segments are trusted by recovery, but
// a byte flipped in one is found before it is sent: the cursor stops at the
// damage, the log is cut there and the files are moved aside, named in an
// error-level log line with their range.
func TestFlippedByteDetectedBeforeSend(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	l, err := OpenLog(logDir, 1, logOptions(dir, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	data := pattern(3500, 5)
	l.Append(data)
	l.Close()
	seg := segmentPath(logDir, 1001)
	if _, sealed, _ := readIndex(indexPath(seg)); !sealed {
		t.Fatal("a rolled segment was not sealed after its fsync")
	}
	flipByte(t, seg, 321)

	logs := &logBuffer{}
	l, err = OpenLog(logDir, 1, logOptions(dir, nil, logs))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := l.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var sent bytes.Buffer
	for {
		n, err := c.Send(&sent, 1<<20)
		if errors.Is(err, ErrDamaged) {
			break
		}
		if err != nil || n == 0 {
			t.Fatalf("send: %d %v; the flipped byte was not detected", n, err)
		}
	}
	if !bytes.Equal(sent.Bytes(), data[:1000]) {
		t.Fatalf("sent %d bytes; want exactly the 1000 before the damaged segment", sent.Len())
	}
	if _, end := l.Bounds(); end != 1001 {
		t.Fatalf("log ends at %d, want it cut at the damaged segment (1001)", end)
	}
	if !strings.Contains(logs.String(), seg) || !strings.Contains(logs.String(), "checksum mismatch in bytes 0..1000") {
		t.Fatalf("the log does not name the file and range:\n%s", logs.String())
	}
	if moved, _ := filepath.Glob(filepath.Join(dir, "damaged", "*", filepath.Base(seg))); len(moved) != 1 {
		t.Fatalf("damaged segment not moved aside: %v", moved)
	}
	if err := l.Append([]byte("x")); !errors.Is(err, ErrRewound) {
		t.Fatalf("append after the cut: %v, want ErrRewound", err)
	}
	l.Resume()
	l.Append(data[1000:])
	if got := readAll(t, l, 1); !bytes.Equal(got, data) {
		t.Fatal("log after resending differs")
	}
}

func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x01
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// A segment not known to be synced (no seal) is CRC-checked in full at
// recovery, and cut at the damage; a copy is kept in damaged/.
func TestUnsealedSegmentCheckedAtRecovery(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	opt := logOptions(dir, nil, nil)
	opt.Fsync = FsyncNo // segments are rolled without fsync, so never sealed
	l, _ := OpenLog(logDir, 1, opt)
	for i := 0; i < 30; i++ {
		l.Append(pattern(100, byte(i)))
	}
	l.Close()
	flipByte(t, segmentPath(logDir, 1001), 250)
	l, err := OpenLog(logDir, 1, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, end := l.Bounds(); end != 1201 {
		t.Fatalf("end %d, want the cut at the damaged record (1201)", end)
	}
	if kept, _ := filepath.Glob(filepath.Join(dir, "damaged", "*", "*.seg")); len(kept) != 2 {
		t.Fatalf("damaged segment and the one after it not kept aside: %v", kept)
	}
}

// Issue 8, point 3, while running: the background scrub finds a byte
// flipped after the segment was written and verified, and cuts the log.
func TestScrubFindsDamage(t *testing.T) {
	dir := t.TempDir()
	opt := testOptions()
	opt.ScrubRate = 1 << 30
	opt.ScrubPause = 20 * time.Millisecond
	logs := &logBuffer{}
	opt.Logger = zerolog.New(logs)
	s := newStore(t, dir, opt, 0)
	defer s.Close()
	s.Append(pattern(2500, 7))
	s.SyncNow()
	seg := segmentPath(filepath.Join(dir, "log", "1"), 1001)
	readAll(t, s.Log(), 1) // a replica read it all: the scrub still rechecks it
	redisprocEventually(t, "segment 1001 sealed", func() bool { _, sealed, _ := readIndex(indexPath(seg)); return sealed })
	flipByte(t, seg, 10)
	redisprocEventually(t, "the scrub to cut the log at 1001", func() bool { return s.State().End == 1001 })
	if !strings.Contains(logs.String(), seg) || !strings.Contains(logs.String(), "checksum mismatch in bytes 0..") {
		t.Fatalf("scrub finding not logged with file and range:\n%s", logs.String())
	}
	// The snapshot was checked at start; a bit flipped since is found by
	// the scrub, and the snapshot is no longer served.
	snap := filepath.Join(dir, "snapshot", s.State().Snapshot.File)
	flipByte(t, snap, 5)
	redisprocEventually(t, "the scrub to move the snapshot aside", func() bool {
		moved, _ := filepath.Glob(filepath.Join(dir, "damaged", "*", filepath.Base(snap)))
		return len(moved) == 1
	})
	if _, _, err := s.OpenSnapshot(); !errors.Is(err, ErrSnapshotDamaged) {
		t.Fatalf("open after the scrub found the snapshot damaged: %v", err)
	}
}

func redisprocEventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Issue 8, point 4 (unit): a bit flipped in the stored snapshot, in the
// header or the body, is found at start; the snapshot and its backlog are
// moved aside, not deleted, and the store starts without history.
func TestFlippedSnapshotFoundAtStart(t *testing.T) {
	for _, at := range []string{"header", "body", "deleted"} {
		t.Run(at, func(t *testing.T) {
			dir := t.TempDir()
			s := newStore(t, dir, testOptions(), 0)
			s.Append([]byte("hello"))
			snap := filepath.Join(dir, "snapshot", s.State().Snapshot.File)
			s.Close()
			pos := int64(2)
			if at == "body" {
				pos = 10
			}
			if at == "deleted" {
				os.Remove(snap)
			} else {
				flipByte(t, snap, pos)
			}
			s, err := Open(dir, testOptions())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if s.State().HasHistory {
				t.Fatal("a snapshot with a flipped bit was trusted")
			}
			if moved, _ := filepath.Glob(filepath.Join(dir, "damaged", "*", filepath.Base(snap))); len(moved) != 1 && at != "deleted" {
				t.Fatalf("damaged snapshot not moved aside: %v", moved)
			}
			// Issue 8, point 6: the backlog of an unusable snapshot is kept.
			if moved, _ := filepath.Glob(filepath.Join(dir, "damaged", "*", "1", "*.seg")); len(moved) != 1 {
				t.Fatalf("its backlog not moved aside: %v", moved)
			}
		})
	}
}

// A newly adopted snapshot is checked before it is first served: damaged,
// it is moved aside and never opened for a replica.
func TestAdoptedSnapshotCheckedBeforeFirstServe(t *testing.T) {
	dir := t.TempDir()
	s := newStore(t, dir, testOptions(), 0)
	defer s.Close()
	s.Append(pattern(100, 1))
	w, _ := s.NewSnapshot()
	w.Write([]byte("REDIS0011 a newer snapshot"))
	replid := s.State().ReplID
	if err := s.AdoptSnapshot(replid, 50, w); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "snapshot", s.State().Snapshot.File)
	flipByte(t, path, 12)
	if f, _, err := s.OpenSnapshot(); !errors.Is(err, ErrSnapshotDamaged) {
		if f != nil {
			f.Close()
		}
		t.Fatalf("open of a damaged snapshot: %v, want ErrSnapshotDamaged", err)
	}
	if _, _, err := s.OpenSnapshot(); !errors.Is(err, ErrSnapshotDamaged) {
		t.Fatalf("second open: %v", err)
	}
	if moved, _ := filepath.Glob(filepath.Join(dir, "damaged", "*", filepath.Base(path))); len(moved) != 1 {
		t.Fatalf("damaged snapshot not moved aside: %v", moved)
	}
}

// shortWriter takes at most n bytes per call, and says so.
type shortWriter struct{ n int }

func (w shortWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return w.n, io.ErrShortWrite
	}
	return len(p), nil
}

// Issue 9, point 5: after a short write the cursor goes on from the byte
// after the last one the writer took, whatever the file position says.
func TestCursorAfterShortWrite(t *testing.T) {
	s := newStore(t, t.TempDir(), testOptions(), 0)
	defer s.Close()
	data := pattern(900, 4)
	s.Append(data)
	c, err := s.Log().NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n, err := c.Send(shortWriter{n: 10}, 1<<20); n != 10 || err == nil {
		t.Fatalf("short write: %d %v", n, err)
	}
	var rest bytes.Buffer
	if _, err := c.Send(&rest, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rest.Bytes(), data[10:]) {
		t.Fatalf("after a short write the cursor sent %d bytes starting %x, want data[10:]", rest.Len(), rest.Bytes()[:min(8, rest.Len())])
	}
}

// Issue 9, point 8: a meta write (with its fsync) does not hold the lock
// that State, appends and PSYNC decisions take.
func TestMetaWriteOutsideStateLock(t *testing.T) {
	dir := t.TempDir()
	blocked, release := make(chan struct{}), make(chan struct{})
	var armed atomic.Bool
	opt := testOptions()
	opt.Log.Sync = func(f *os.File) error {
		if armed.Load() && strings.HasSuffix(f.Name(), "meta.json.tmp") {
			blocked <- struct{}{}
			<-release
		}
		return f.Sync()
	}
	s := newStore(t, dir, opt, 0)
	defer s.Close()
	s.Append([]byte("abc"))
	for _, name := range []string{"ShiftID", "AdoptSnapshot"} {
		armed.Store(true)
		done := make(chan error, 1)
		go func() {
			if name == "ShiftID" {
				done <- s.ShiftID(RandomReplID())
				return
			}
			w, _ := s.NewSnapshot()
			w.Write([]byte("REDIS0011"))
			done <- s.AdoptSnapshot(s.State().ReplID, 2, w)
		}()
		<-blocked
		got := make(chan State, 1)
		go func() { got <- s.State() }()
		select {
		case <-got:
		case <-time.After(5 * time.Second):
			t.Fatalf("State() waited on the meta write of %s", name)
		}
		if err := s.Append([]byte("d")); err != nil {
			t.Fatalf("append during the meta write of %s: %v", name, err)
		}
		armed.Store(false)
		release <- struct{}{}
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// Issue 10: everything the store creates is readable by its owner only.
func TestDataDirModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	s := newStore(t, dir, testOptions(), 0)
	s.Append(pattern(2500, 1))
	s.SyncNow()
	s.Log().damaged(s.Log().segs[1], "test damage") // makes damaged/<time>/
	s.Close()
	s, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := os.Stat(filepath.Join(dir, "damaged")); err != nil {
		t.Fatal(err)
	}
	n := 0
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, info.Mode().Perm(), want)
		}
		n++
		return nil
	})
	if err != nil || n < 10 {
		t.Fatalf("walked %d entries: %v", n, err)
	}
}

// A rolled segment is handed to the syncer at once, not at the next tick.
func TestRollWakesTheSyncer(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLog(filepath.Join(dir, "log"), 1, logOptions(dir, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	manualSyncs(l)
	l.Append(pattern(999, 1))
	if len(l.syncer.wake) != 0 {
		t.Fatal("everysec syncer woken by a plain append")
	}
	l.Append(pattern(2, 1)) // rolls
	if len(l.syncer.wake) != 1 {
		t.Fatal("the roll did not wake the syncer")
	}
	l.SyncNow()
	if _, sealed, _ := readIndex(indexPath(segmentPath(filepath.Join(dir, "log"), 1))); !sealed {
		t.Fatal("the rolled segment was not sealed after its fsync")
	}
}

// Issue 21, point 5: bytes past the last index record of the last segment
// (an append whose index record a kill -9 prevented, under fsync no) are a
// torn tail, logged as a warning; a checksum mismatch stays an error.
func TestTornTailIsAWarningDamageAnError(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	opt := logOptions(dir, nil, nil)
	opt.Fsync = FsyncNo
	l, err := OpenLog(logDir, 1, opt)
	if err != nil {
		t.Fatal(err)
	}
	l.Append(pattern(1500, 7))
	l.Close()
	seg := segmentPath(logDir, 1001)
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("*1\r\n$4\r\nPI")) // the data of an append, without its index record
	f.Close()

	logs := &logBuffer{}
	opt.Logger = zerolog.New(logs)
	if l, err = OpenLog(logDir, 1, opt); err != nil {
		t.Fatal(err)
	}
	if _, end := l.Bounds(); end != 1501 {
		t.Fatalf("log ends at %d after the torn tail, want 1501", end)
	}
	l.Close()
	out := logs.String()
	if !strings.Contains(out, `"level":"warn"`) || !strings.Contains(out, "torn tail") || !strings.Contains(out, seg) ||
		strings.Contains(out, `"level":"error"`) || strings.Contains(out, "damaged") {
		t.Fatalf("a torn tail is not a warning naming the segment:\n%s", out)
	}

	flipByte(t, seg, 100)
	logs = &logBuffer{}
	opt.Logger = zerolog.New(logs)
	if l, err = OpenLog(logDir, 1, opt); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if out := logs.String(); !strings.Contains(out, `"level":"error"`) || !strings.Contains(out, "backlog segment damaged") ||
		!strings.Contains(out, "checksum mismatch") {
		t.Fatalf("a checksum mismatch is not an error:\n%s", out)
	}
}
