package backlog

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// sendAll sends from c until the end or an error, in sends of at most max.
func sendAll(c *Cursor, max int64) ([]byte, error) {
	var buf bytes.Buffer
	for {
		n, err := c.Send(&buf, max)
		if err != nil || n == 0 {
			return buf.Bytes(), err
		}
	}
}

// Issue 21, point 1: a byte flipped in a region that one reader already
// read (and so checked) is checked again by the next reader and not sent:
// no mark lets a later send skip the check. The flip goes through the
// running process's page cache, as a write into the file does.
func TestDamageAfterAFirstSendIsNeverSent(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	logs := &logBuffer{}
	l, err := OpenLog(logDir, 1, logOptions(dir, nil, logs))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	data := pattern(3500, 9)
	for i := 0; i < len(data); i += 100 {
		if err := l.Append(data[i : i+100]); err != nil {
			t.Fatal(err)
		}
	}
	first, err := l.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := sendAll(first, 1<<20); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("first reader: %d bytes, %v", len(got), err)
	}
	first.Close()

	seg := segmentPath(logDir, 1001)
	flipByte(t, seg, 321)
	second, err := l.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	got, err := sendAll(second, 1<<20)
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("second reader: %d bytes, %v; want ErrDamaged", len(got), err)
	}
	// The records of one read are all checked before any is sent, and
	// the log is cut at the damaged segment's start anyway.
	if !bytes.Equal(got, data[:1000]) {
		t.Fatalf("second reader got %d bytes; want exactly the 1000 before the damaged segment", len(got))
	}
	if !strings.Contains(logs.String(), seg) || !strings.Contains(logs.String(), "checksum mismatch in bytes 300..400 (stream offsets 1301..1401)") ||
		!strings.Contains(logs.String(), `"level":"error"`) {
		t.Fatalf("no error-level line names the file and the range:\n%s", logs.String())
	}
	if _, end := l.Bounds(); end != 1001 {
		t.Fatalf("log ends at %d, want it cut at the damaged segment (1001)", end)
	}
}

// A segment that retention removed while a reader held it open is read
// from the held file, and checked there too: its damage is not sent, and
// is logged though the segment is no longer in the log.
func TestDamageInAHeldSegmentIsNeverSent(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	logs := &logBuffer{}
	opt := logOptions(dir, nil, logs)
	opt.MaxBytes = 2000
	l, err := OpenLog(logDir, 1, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	data := pattern(5000, 3)
	if err := l.Append(data[:1500]); err != nil {
		t.Fatal(err)
	}
	c, err := l.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seg := segmentPath(logDir, 1)
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := l.Append(data[1500:]); err != nil {
		t.Fatal(err)
	}
	if first, _ := l.Bounds(); first == 1 {
		t.Fatal("retention kept the first segment")
	}
	if _, err := f.WriteAt([]byte{data[500] ^ 0x10}, 500); err != nil {
		t.Fatal(err)
	}
	got, err := sendAll(c, 1<<20)
	if !errors.Is(err, ErrDamaged) || len(got) != 0 {
		t.Fatalf("held segment: sent %d bytes, %v; want nothing and ErrDamaged", len(got), err)
	}
	if !strings.Contains(logs.String(), seg) || !strings.Contains(logs.String(), "checksum mismatch in bytes 0..1000") {
		t.Fatalf("the damage in the held segment is not logged:\n%s", logs.String())
	}
}

// Records larger than a send's buffer, and sends smaller than a record,
// still go out whole, in order, and checked.
func TestCursorSendsAnyRecordSizeInAnyChunk(t *testing.T) {
	dir := t.TempDir()
	opt := logOptions(dir, nil, nil)
	opt.SegmentBytes = 4 << 20
	l, err := OpenLog(filepath.Join(dir, "log"), 1, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var data []byte
	for _, n := range []int{10, sendBufBytes + 12345, 70, 3 * sendBufBytes / 2, 1, sendBufBytes, 5000} {
		p := pattern(n, byte(n))
		if err := l.Append(p); err != nil {
			t.Fatal(err)
		}
		data = append(data, p...)
	}
	for _, max := range []int64{7, 4096, sendBufBytes - 1, sendBufBytes + 1, 4 << 20} {
		c, err := l.NewCursor(1)
		if err != nil {
			t.Fatal(err)
		}
		got, err := sendAll(c, max)
		c.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("sends of %d: %d of %d bytes, %v", max, len(got), len(data), err)
		}
	}
	// From inside a record, and again after moving back.
	c, err := l.NewCursor(20000)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := sendAll(c, 100000); err != nil || !bytes.Equal(got, data[19999:]) {
		t.Fatalf("from inside a record: %d bytes, %v", len(got), err)
	}
}

// readSnapshot reads snap through a SnapshotReader in reads of size n.
func readSnapshot(t *testing.T, s *Store, n int) ([]byte, error) {
	t.Helper()
	f, snap, err := s.OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd := s.NewSnapshotReader(f, snap)
	var got []byte
	buf := make([]byte, n)
	for {
		k, err := rd.Read(buf)
		got = append(got, buf[:k]...)
		if errors.Is(err, io.EOF) {
			return got, nil
		}
		if err != nil {
			return got, err
		}
	}
}

// Issue 21, point 2: the snapshot is checked at every full sync, not once
// per process: a bit flipped after a first serve keeps the RDB's last
// bytes back, so no replica gets it whole, and it is moved aside.
func TestSnapshotDamagedAfterItsFirstServeIsHeldBack(t *testing.T) {
	dir := t.TempDir()
	logs := &logBuffer{}
	opt := testOptions()
	opt.Logger = zerolog.New(logs)
	s := newStore(t, dir, opt, 0)
	defer s.Close()
	rdb := append([]byte("REDIS0011"), pattern(100000, 4)...)
	s.Append(pattern(100, 1))
	w, _ := s.NewSnapshot()
	w.Write(rdb)
	if err := s.AdoptSnapshot(s.State().ReplID, 50, w); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{8, 4096, 1 << 20} {
		if got, err := readSnapshot(t, s, n); err != nil || !bytes.Equal(got, rdb) {
			t.Fatalf("reads of %d: %d bytes, %v", n, len(got), err)
		}
	}
	path := filepath.Join(dir, "snapshot", s.State().Snapshot.File)
	flipByte(t, path, 5000)
	got, err := readSnapshot(t, s, 4096)
	if !errors.Is(err, ErrSnapshotDamaged) {
		t.Fatalf("damaged snapshot read: %d bytes, %v; want ErrSnapshotDamaged", len(got), err)
	}
	if len(got) != len(rdb)-snapshotHeldBytes {
		t.Fatalf("read %d bytes of %d; want all but the last %d", len(got), len(rdb), snapshotHeldBytes)
	}
	if moved, _ := filepath.Glob(filepath.Join(dir, "damaged", "*", filepath.Base(path))); len(moved) != 1 {
		t.Fatalf("damaged snapshot not moved aside: %v", moved)
	}
	if !strings.Contains(logs.String(), path) || !strings.Contains(logs.String(), `"level":"error"`) {
		t.Fatalf("no error-level line names the snapshot:\n%s", logs.String())
	}
	if _, _, err := s.OpenSnapshot(); !errors.Is(err, ErrSnapshotDamaged) {
		t.Fatalf("open after the damage: %v, want ErrSnapshotDamaged", err)
	}
}

// An index record whose length runs past its segment is damage: it is
// not trusted to size a read (a flipped high bit would ask for gigabytes).
func TestIndexRecordPastItsSegmentIsDamage(t *testing.T) {
	dir := t.TempDir()
	logDir := filepath.Join(dir, "log")
	l, err := OpenLog(logDir, 1, logOptions(dir, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	data := pattern(2500, 1)
	for i := 0; i < len(data); i += 500 {
		l.Append(data[i : i+500])
	}
	idx := indexPath(segmentPath(logDir, 1001))
	f, err := os.OpenFile(idx, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The second record's length gets its top bit set.
	if _, err := f.WriteAt([]byte{0x80}, int64(len(indexMagic))+recordSize+3); err != nil {
		t.Fatal(err)
	}
	f.Close()
	c, err := l.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := sendAll(c, 1<<20)
	if !errors.Is(err, ErrDamaged) || !bytes.Equal(got, data[:1000]) {
		t.Fatalf("sent %d bytes, %v; want the 1000 before the damaged segment, then ErrDamaged", len(got), err)
	}
}

// Verify, called right before a full sync, finds a flip anywhere in the
// snapshot (its first byte, its middle, its last byte) before anything is
// sent; a flip after Verify still keeps the last bytes back.
func TestSnapshotVerifyBeforeServe(t *testing.T) {
	rdb := append([]byte("REDIS0011"), pattern(100000, 4)...)
	setup := func(t *testing.T) (*Store, string) {
		dir := t.TempDir()
		s := newStore(t, dir, testOptions(), 0)
		t.Cleanup(func() { s.Close() })
		s.Append(pattern(100, 1))
		w, _ := s.NewSnapshot()
		w.Write(rdb)
		if err := s.AdoptSnapshot(s.State().ReplID, 50, w); err != nil {
			t.Fatal(err)
		}
		f, _, err := s.OpenSnapshot() // a first serve: its open-time check is done
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		return s, filepath.Join(dir, "snapshot", s.State().Snapshot.File)
	}
	for _, at := range []int64{0, 5000, int64(len(rdb)) - snapshotHeldBytes, int64(len(rdb)) - 1} {
		s, path := setup(t)
		flipByte(t, path, at)
		f, snap, err := s.OpenSnapshot()
		if err != nil {
			t.Fatal(err)
		}
		err = s.NewSnapshotReader(f, snap).Verify(context.Background())
		f.Close()
		if !errors.Is(err, ErrSnapshotDamaged) {
			t.Fatalf("flip at %d: Verify says %v, want ErrSnapshotDamaged", at, err)
		}
		if _, _, err := s.OpenSnapshot(); !errors.Is(err, ErrSnapshotDamaged) {
			t.Fatalf("flip at %d: open after Verify found it: %v", at, err)
		}
	}
	s, path := setup(t)
	f, snap, err := s.OpenSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rd := s.NewSnapshotReader(f, snap)
	if err := rd.Verify(context.Background()); err != nil {
		t.Fatalf("intact snapshot: %v", err)
	}
	flipByte(t, path, 0) // after the check, before the send
	got, err := io.ReadAll(io.LimitReader(rd, int64(len(rdb))))
	if !errors.Is(err, ErrSnapshotDamaged) || len(got) != len(rdb)-snapshotHeldBytes {
		t.Fatalf("flip after Verify: %d bytes read, %v; want all but the last %d and ErrSnapshotDamaged", len(got), err, snapshotHeldBytes)
	}
}
