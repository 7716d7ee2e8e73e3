package backlog

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func snapshotFiles(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, "snapshot"))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func adopt(t *testing.T, s *Store, offset int64) {
	t.Helper()
	w, err := s.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("REDIS0010 snapshot"))
	if err := s.AdoptSnapshot(s.State().ReplID, offset, w); err != nil {
		t.Fatal(err)
	}
}

// snapshot.keep keeps the newest N snapshots, each continuable: retention
// deletes a kept snapshot once it removes the stream that follows it, and
// the meta never names a snapshot the log does not continue.
func TestSnapshotHistoryFollowsRetention(t *testing.T) {
	dir := t.TempDir()
	opt := testOptions()
	opt.Log.MaxBytes = 3000
	opt.SnapshotKeep = 3
	s := newStore(t, dir, opt, 0)
	defer s.Close()
	s.Append(pattern(2500, 1))
	adopt(t, s, 500)
	adopt(t, s, 1000)
	adopt(t, s, 1200)
	adopt(t, s, 2400) // the fourth: the oldest kept (500) goes
	m, _ := ReadMeta(dir)
	if got := offsetsOf(m.Snapshots()); !equalInts(got, []int64{1000, 1200, 2400}) {
		t.Fatalf("kept snapshots %v, want [1000 1200 2400]", got)
	}
	if n := snapshotFiles(t, dir); n != 3 {
		t.Fatalf("%d snapshot files, want 3", n)
	}
	// Retention moves the log's start to 2001: the snapshots at 1000 and
	// 1200 can no longer be continued, and go with their stream.
	s.Append(pattern(2000, 2))
	first := s.State().First
	if first <= 1201 || first > 2401 {
		t.Fatalf("log starts at %d; the test wants it in (1201, 2401]", first)
	}
	m, _ = ReadMeta(dir)
	if got := offsetsOf(m.Snapshots()); !equalInts(got, []int64{2400}) {
		t.Fatalf("after retention to %d: kept snapshots %v, want [2400]", first, got)
	}
	if n := snapshotFiles(t, dir); n != 1 {
		t.Fatalf("%d snapshot files after retention, want 1", n)
	}
	// The history survives a restart.
	adopt(t, s, 4000)
	s.Close()
	s, err := Open(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if n := snapshotFiles(t, dir); n != 2 {
		t.Fatalf("%d snapshot files after a restart, want 2", n)
	}
}

// A StreamReader holds its segments: retention removing them under it
// changes nothing it reads, and it reads only whole, verified records.
func TestStreamReaderBesideRetention(t *testing.T) {
	dir := t.TempDir()
	opt := testOptions()
	opt.Log.MaxBytes = 3000
	s := newStore(t, dir, opt, 0)
	defer s.Close()
	data := pattern(2500, 3)
	s.Append(data)
	logDir := Layout(dir).LogDir(s.State().Epoch)
	r, err := OpenStream(logDir, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if first, end := r.Bounds(); first != 1 || end != 2501 {
		t.Fatalf("held [%d, %d), want [1, 2501)", first, end)
	}
	s.Append(pattern(3000, 4)) // retention removes the segments held
	if first := s.State().First; first <= 2001 {
		t.Fatalf("retention kept from %d", first)
	}
	rr, err := r.Range(1, 2501)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rr)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, err %v; want the %d appended", len(got), err, len(data))
	}
	if _, err := OpenStream(logDir, 1); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("open from a removed offset: %v, want ErrTrimmed", err)
	}
}

func offsetsOf(snaps []SnapshotInfo) []int64 {
	var out []int64
	for _, s := range snaps {
		out = append(out, s.Offset)
	}
	return out
}

func equalInts(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Readers beside a live proxy change nothing in its log dir: the segment
// the writer prepared ahead of its next roll survives them, and the roll
// succeeds. (Listing segments used to delete it, failing the roll.)
func TestReadersLeavePreparedSegment(t *testing.T) {
	dir := t.TempDir()
	s := newStore(t, dir, testOptions(), 0)
	defer s.Close()
	if err := s.Append(pattern(600, 5)); err != nil {
		t.Fatal(err)
	}
	logDir := Layout(dir).LogDir(s.State().Epoch)
	prep := segmentPath(logDir, 1001) + preparedSuffix
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(prep); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no segment prepared ahead of the roll")
		}
		time.Sleep(5 * time.Millisecond)
	}
	r, err := OpenStream(logDir, 1)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if _, err := ReadExtent(logDir, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(pattern(600, 6)); err != nil {
		t.Fatalf("append across the roll after readers listed the log: %v", err)
	}
}

// A StreamReader hands out no byte of a record that fails its CRC, and
// holds only whole records: a torn tail is not part of the stream.
func TestStreamReaderVerifies(t *testing.T) {
	dir := t.TempDir()
	s := newStore(t, dir, testOptions(), 0)
	defer s.Close()
	s.Append(pattern(300, 7))
	s.Append(pattern(300, 8))
	logDir := Layout(dir).LogDir(s.State().Epoch)
	seg := segmentPath(logDir, 1)
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("torn")) // bytes without an index record
	f.Close()
	r, err := OpenStream(logDir, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, end := r.Bounds(); end != 601 {
		t.Fatalf("held end %d, want 601 (whole records only)", end)
	}
	flipByte(t, seg, 400)
	rr, _ := r.Range(1, 601)
	got, err := io.ReadAll(rr)
	if !errors.Is(err, ErrDamaged) || len(got) != 300 {
		t.Fatalf("read %d bytes, err %v; want the first record and ErrDamaged", len(got), err)
	}
}

// Thinning keeps the newest half of the time index whole: recent times
// stay exact to the second however long the log lives.
func TestTimeIndexThinningKeepsRecentSeconds(t *testing.T) {
	ti := openTimeIndex(t.TempDir(), 0)
	defer ti.close()
	start := time.Unix(1_700_000_000, 0)
	for i := range 2*timeIndexMax + 123 {
		ti.note(int64(1+i), start.Add(time.Duration(i)*time.Second))
	}
	n := len(ti.points)
	if n > timeIndexMax {
		t.Fatalf("%d points, cap %d", n, timeIndexMax)
	}
	recent := ti.points[n-timeIndexMax/2:]
	for i := 1; i < len(recent); i++ {
		if recent[i].Time.Sub(recent[i-1].Time) != time.Second {
			t.Fatalf("recent points %d and %d are %s apart", i-1, i, recent[i].Time.Sub(recent[i-1].Time))
		}
	}
	if ti.points[0].Offset != 1 {
		t.Fatalf("thinning lost the first point: %+v", ti.points[0])
	}
}

// Retention runs on the append path; pruning the snapshot history from it
// must not wait while a refresh adopts a snapshot, whose commit fsyncs a
// whole RDB: the upstream reader would stall for as long. The history is
// still pruned, once the adoption lets go.
func TestTrimDoesNotWaitForSnapshotAdoption(t *testing.T) {
	dir := t.TempDir()
	opt := testOptions()
	opt.Log.MaxBytes = 3000
	opt.SnapshotKeep = 3
	var blocking atomic.Bool
	inSync, gate := make(chan struct{}, 1), make(chan struct{})
	opt.Log.Sync = func(f *os.File) error {
		if blocking.Load() && strings.Contains(filepath.Base(f.Name()), "incoming-") {
			inSync <- struct{}{}
			<-gate
		}
		return f.Sync()
	}
	s := newStore(t, dir, opt, 0)
	defer s.Close()
	s.Append(pattern(2500, 1))
	adopt(t, s, 500)
	blocking.Store(true)
	adopted := make(chan error, 1)
	go func() {
		w, err := s.NewSnapshot()
		if err != nil {
			adopted <- err
			return
		}
		w.Write([]byte("REDIS0010 snapshot"))
		adopted <- s.AdoptSnapshot(s.State().ReplID, 2400, w)
	}()
	<-inSync
	appended := make(chan error, 1)
	go func() { appended <- s.Append(pattern(2000, 2)) }()
	select {
	case err := <-appended:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		close(gate)
		<-appended
		<-adopted
		t.Fatal("an append that trimmed waited for a snapshot adoption's fsync")
	}
	close(gate)
	if err := <-adopted; err != nil {
		t.Fatal(err)
	}
	first := s.State().First
	if first <= 501 || first > 2401 {
		t.Fatalf("log starts at %d; the test wants it in (501, 2401]", first)
	}
	m, _ := ReadMeta(dir)
	if got := offsetsOf(m.Snapshots()); !equalInts(got, []int64{2400}) {
		t.Fatalf("after retention to %d: kept snapshots %v, want [2400]", first, got)
	}
	if n := snapshotFiles(t, dir); n != 1 {
		t.Fatalf("%d snapshot files after retention, want 1", n)
	}
}
