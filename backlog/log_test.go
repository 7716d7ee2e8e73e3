package backlog

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

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

func TestTornTailIsCutAtTheFileEnd(t *testing.T) {
	dir := t.TempDir()
	s := newStore(t, dir, testOptions(), 0)
	s.Append(pattern(2500, 3))
	s.Close()
	// Cut bytes off the last segment and remove a middle one's successor: the
	// log must end where the bytes end, and never past a gap.
	last := segmentPath(filepath.Join(dir, "log", "1"), 2001)
	if err := os.Truncate(last, 100); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if end := s2.State().End; end != 2101 {
		t.Fatalf("end %d, want 2101", end)
	}
	s2.Close()
	os.Remove(segmentPath(filepath.Join(dir, "log", "1"), 1001))
	s3, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	if end := s3.State().End; end != 1001 {
		t.Fatalf("end after gap %d, want 1001", end)
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
	matches, _ := filepath.Glob(filepath.Join(dir, "meta.json.corrupt-*"))
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
	c, _ := s.Log().NewCursor(1)
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "x" {
		t.Fatalf("%q %v", b, err)
	}
}
