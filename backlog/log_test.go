package backlog

import (
	"bytes"
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

func testOptions() Options {
	return Options{Log: LogOptions{SegmentBytes: 1000, MaxBytes: 1 << 30, Fsync: FsyncAlways}, Logger: zerolog.Nop()}
}

func readAll(t *testing.T, l *Log, from int64) []byte {
	t.Helper()
	c, err := l.NewCursor(from)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var buf bytes.Buffer
	for {
		n, err := c.Send(&buf, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return buf.Bytes()
		}
	}
}

func pattern(n int, seed byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i*7)
	}
	return p
}

func newStore(t *testing.T, dir string, opt Options, offset int64) *Store {
	t.Helper()
	s, err := Open(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	w, err := s.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("REDIS0010fake"))
	if err := s.Reset(RandomReplID(), offset, w); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestAppendAcrossSegmentsAndReopen(t *testing.T) {
	dir := t.TempDir()
	s := newStore(t, dir, testOptions(), 500)
	data := pattern(4321, 1)
	for i := 0; i < len(data); i += 333 {
		if err := s.Append(data[i:min(i+333, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	st := s.State()
	if st.First != 501 || st.End != 501+4321 {
		t.Fatalf("bounds %d..%d", st.First, st.End)
	}
	if got := readAll(t, s.Log(), 501); !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	if got := readAll(t, s.Log(), 501+1234); !bytes.Equal(got, data[1234:]) {
		t.Fatal("read from middle differs")
	}
	replid := st.ReplID
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	st2 := s2.State()
	if !st2.HasHistory || st2.ReplID != replid || st2.End != st.End || st2.Durable != st.End {
		t.Fatalf("reopened state %+v, want replid %s end %d", st2, replid, st.End)
	}
	if got := readAll(t, s2.Log(), 501); !bytes.Equal(got, data) {
		t.Fatal("read back after reopen differs")
	}
}

// Recovery keeps each segment up to its last record that is whole and, for
// the last segment, whose checksum matches; nothing after damage is kept.
func TestRecoveryCutsAtTheLastGoodRecord(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log", "1")
	reopen := func() *Store {
		t.Helper()
		s, err := Open(dir, testOptions())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := newStore(t, dir, testOptions(), 0)
	data := pattern(2500, 3)
	for i := 0; i < len(data); i += 100 {
		s.Append(data[i : i+100])
	}
	s.Close()

	// A torn tail: bytes cut off mid-record.
	if err := os.Truncate(segmentPath(logDir, 2001), 150); err != nil {
		t.Fatal(err)
	}
	s = reopen()
	if end := s.State().End; end != 2101 {
		t.Fatalf("after torn tail: end %d, want 2101", end)
	}
	if got := readAll(t, s.Log(), 1); !bytes.Equal(got, data[:2100]) {
		t.Fatal("bytes before the torn record changed")
	}
	s.Close()

	// A flipped byte in the last segment: cut before the bad record.
	f, _ := os.OpenFile(segmentPath(logDir, 2001), os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, 50)
	f.Close()
	s = reopen()
	if end := s.State().End; end != 2001 {
		t.Fatalf("after corruption: end %d, want 2001", end)
	}
	s.Close()

	// A lost index makes its segment, and all after it, untrustworthy.
	os.Remove(indexPath(segmentPath(logDir, 1001)))
	s = reopen()
	defer s.Close()
	if end := s.State().End; end != 1001 {
		t.Fatalf("after a lost index: end %d, want 1001", end)
	}
	if _, err := os.Stat(segmentPath(logDir, 2001)); !os.IsNotExist(err) {
		t.Fatalf("segment after the damage kept: %v", err)
	}
}

// A failed append leaves the log as it was, and a retry lands at the same
// offset: the upstream link relies on this when the disk is full.
func TestFailedAppendLeavesNoTrace(t *testing.T) {
	s := newStore(t, t.TempDir(), testOptions(), 0)
	defer s.Close()
	// The closed index below fails fsyncs too, which would cut the log
	// back: here only the append may see it.
	manualSyncs(s.Log())
	s.Append([]byte("hello "))
	a := s.Log().active
	a.idx.Close() // the next index write fails, like ENOSPC would
	if err := s.Append([]byte("lost")); err == nil {
		t.Fatal("append with a failing index succeeded")
	}
	if end := s.State().End; end != 7 {
		t.Fatalf("end %d after a failed append, want 7", end)
	}
	idx, err := os.OpenFile(a.idx.Name(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	a.idx = idx
	if err := s.Append([]byte("world")); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, s.Log(), 1); string(got) != "hello world" {
		t.Fatalf("log holds %q", got)
	}
}

func TestCorruptMetaStartsWithoutHistory(t *testing.T) {
	dir := t.TempDir()
	s := newStore(t, dir, testOptions(), 0)
	s.Append([]byte("hello"))
	s.Close()
	raw, _ := os.ReadFile(filepath.Join(dir, "meta.json"))
	raw[len(raw)/2] ^= 0x55
	os.WriteFile(filepath.Join(dir, "meta.json"), raw, 0o644)
	s2, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.State().HasHistory {
		t.Fatal("corrupt meta was trusted")
	}
	matches, _ := filepath.Glob(filepath.Join(dir, "damaged", "*", "meta.json"))
	if len(matches) != 1 {
		t.Fatalf("corrupt meta not kept aside: %v", matches)
	}
}

func TestRetentionTrimsOldSegments(t *testing.T) {
	opt := testOptions()
	opt.Log.MaxBytes = 3000
	s := newStore(t, t.TempDir(), opt, 0)
	defer s.Close()
	for i := 0; i < 20; i++ {
		s.Append(pattern(500, byte(i)))
	}
	st := s.State()
	if held := st.End - st.First; held > opt.Log.MaxBytes+opt.Log.SegmentBytes {
		t.Fatalf("holds %d bytes, limit %d", held, opt.Log.MaxBytes+opt.Log.SegmentBytes)
	}
	if _, err := s.Log().NewCursor(1); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("cursor below first: %v", err)
	}
}

func TestShiftIDPersists(t *testing.T) {
	dir := t.TempDir()
	s := newStore(t, dir, testOptions(), 99)
	s.Append([]byte("abc"))
	old := s.State().ReplID
	newID := RandomReplID()
	if err := s.ShiftID(newID); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	st := s2.State()
	if st.ReplID != newID || st.ReplID2 != old || st.SecondOffset != 103 {
		t.Fatalf("after shift: %+v", st)
	}
}

func TestWaitersWakeOnAppend(t *testing.T) {
	s := newStore(t, t.TempDir(), testOptions(), 0)
	defer s.Close()
	ch := s.Log().Changed()
	go s.Append([]byte("x"))
	<-ch
	if got := readAll(t, s.Log(), 1); string(got) != "x" {
		t.Fatalf("%q", got)
	}
}

// Retention by age removes sealed segments older than MaxAge, never the
// active one.
func TestRetentionByAge(t *testing.T) {
	opt := testOptions()
	opt.Log.MaxAge = 50 * time.Millisecond
	s := newStore(t, t.TempDir(), opt, 0)
	defer s.Close()
	s.Append(pattern(2500, 1))
	time.Sleep(100 * time.Millisecond)
	s.Log().lastTrim = time.Time{}
	s.Append([]byte("x"))
	st := s.State()
	if st.First != 2001 || st.End != 2502 {
		t.Fatalf("after age retention: [%d, %d), want [2001, 2502)", st.First, st.End)
	}
}

// A cursor holds its segment from creation: a replica receiving its RDB
// keeps the bytes that follow it even if retention moves on meanwhile.
func TestCursorHoldsItsSegment(t *testing.T) {
	opt := testOptions()
	opt.Log.MaxBytes = 2000
	s := newStore(t, t.TempDir(), opt, 0)
	defer s.Close()
	data := pattern(1000, 9)
	s.Append(data)
	c, err := s.Log().NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 10; i++ {
		s.Append(pattern(1000, byte(i)))
	}
	if first := s.State().First; first <= 1000 {
		t.Fatalf("retention did not move: first %d", first)
	}
	var buf bytes.Buffer
	if n, err := c.Send(&buf, 1<<20); err != nil || n != 1000 || !bytes.Equal(buf.Bytes(), data) {
		t.Fatalf("held segment: %d bytes, %v", n, err)
	}
	if _, err := c.Send(&buf, 1<<20); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("past the held segment: %v, want ErrTrimmed", err)
	}
}

// Retention keeps the stream after the snapshot, up to HoldMaxBytes beyond
// MaxBytes, so the snapshot stays usable; past the bound it lets go.
func TestRetentionHoldsTheSnapshotWithinABound(t *testing.T) {
	opt := testOptions()
	opt.Log.MaxBytes = 3000
	opt.Log.HoldMaxBytes = 4000
	s := newStore(t, t.TempDir(), opt, 0)
	defer s.Close()
	for i := 0; i < 12; i++ { // 6000 bytes: past MaxBytes, within the hold
		s.Append(pattern(500, byte(i)))
	}
	if st := s.State(); st.First != 1 {
		t.Fatalf("retention trimmed to %d although the snapshot needs offset 1 within the hold", st.First)
	}
	for i := 0; i < 20; i++ {
		s.Append(pattern(500, byte(i)))
	}
	st := s.State()
	if st.First == 1 {
		t.Fatal("retention held past the bound")
	}
	if held := st.End - st.First; held > opt.Log.MaxBytes+opt.Log.HoldMaxBytes+opt.Log.SegmentBytes {
		t.Fatalf("holds %d bytes, limit %d", held, opt.Log.MaxBytes+opt.Log.HoldMaxBytes+opt.Log.SegmentBytes)
	}
}

// Close may come while the writer appends (a new history, shutdown): the
// writer then gets ErrClosed, Close returns, and what was appended before
// is kept. Close used to read the writer's prepared-segment state without
// a lock and wait for a prepared segment that a concurrent roll had
// already taken: it hung for good.
func TestCloseWhileTheWriterRolls(t *testing.T) {
	for iter := 0; iter < 20; iter++ {
		dir := t.TempDir()
		opt := logOptions(dir, nil, nil)
		opt.SegmentBytes = 4096 // a roll, and a prepared segment, every few appends
		l, err := OpenLog(filepath.Join(dir, "log"), 1, opt)
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewSource(int64(iter)))
		stream := make([]byte, 4<<20)
		rng.Read(stream)
		appended := make(chan int)
		sizes := rand.New(rand.NewSource(int64(iter)))
		go func() {
			off := 0
			for off < len(stream) {
				n := min(1+sizes.Intn(3000), len(stream)-off)
				if err := l.Append(stream[off : off+n]); err != nil {
					break
				}
				off += n
			}
			appended <- off
		}()
		time.Sleep(time.Duration(rng.Intn(2000)) * time.Microsecond)
		closed := make(chan error, 1)
		go func() { closed <- l.Close() }()
		select {
		case <-closed:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: Close did not return while the writer was rolling segments", iter)
		}
		<-appended
		l2, err := OpenLog(filepath.Join(dir, "log"), 1, opt)
		if err != nil {
			t.Fatal(err)
		}
		if got := readAll(t, l2, 1); !bytes.Equal(got, stream[:len(got)]) {
			t.Fatalf("round %d: the reopened log is not the stream's first %d bytes", iter, len(got))
		}
		l2.Close()
	}
}
