package backlog

import (
	"os"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// The time index dates every byte to within a second, is readable while
// the log is open (what a kill -9 leaves), ignores a torn last record, and
// stays bounded however long the log lives.
func TestTimeIndex(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLog(dir, 1, LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: FsyncNo, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	// Start just past a second boundary, so the two appends share a second.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 10*time.Millisecond)))
	t0 := time.Now()
	l.Append(make([]byte, 100))
	l.Append(make([]byte, 100)) // same second: no record
	time.Sleep(1100 * time.Millisecond)
	t1 := time.Now()
	l.Append(make([]byte, 100))
	points, err := ReadTimeIndex(dir) // without Close, as after kill -9
	if err != nil {
		t.Fatal(err)
	}
	if len(points) != 2 || points[0].Offset != 1 || points[1].Offset != 201 {
		t.Fatalf("points %+v: want offsets 1 and 201", points)
	}
	for off, want := range map[int64]time.Time{1: t0, 200: t0, 201: t1, 300: t1} {
		got, ok := l.TimeAt(off)
		if !ok || got.Sub(want).Abs() > 50*time.Millisecond {
			t.Errorf("TimeAt(%d) = %v %v, want about %v", off, got, ok, want)
		}
	}
	l.Close()

	// A torn record is dropped at the next open, and appends stay aligned.
	path := timeIndexPath(dir)
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte{1, 2, 3})
	f.Close()
	l, err = OpenLog(dir, 1, LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: FsyncNo, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	l.Append(make([]byte, 10))
	if points, _ := ReadTimeIndex(dir); len(points) != 3 || points[2].Offset != 301 {
		t.Fatalf("after a torn record: %+v", points)
	}

	// Bounded: a year of seconds keeps the file under its cap, with the
	// first and the latest points.
	ti := l.times
	start := time.Now()
	for i := range 3 * timeIndexMax {
		ti.note(int64(1000+i), start.Add(time.Duration(i)*time.Second))
	}
	l.Close()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if max := int64(len(timeIndexMagic) + timeIndexMax*timeRecordSize); info.Size() > max {
		t.Fatalf("time index %d bytes, cap %d", info.Size(), max)
	}
	points, _ = ReadTimeIndex(dir)
	if points[0].Offset != 1 || points[len(points)-1].Offset != int64(1000+3*timeIndexMax-1) {
		t.Fatalf("thinning lost the ends: first %+v last %+v", points[0], points[len(points)-1])
	}

	// Points past the recovered end (a segment cut at recovery) go.
	if cut := openTimeIndex(dir, 201); len(cut.points) != 1 || cut.points[0].Offset != 1 {
		t.Fatalf("after a cut to 201: %+v", cut.points)
	} else {
		cut.close()
	}
	if points, _ := ReadTimeIndex(dir); len(points) != 1 {
		t.Fatalf("file after a cut: %+v", points)
	}
}
