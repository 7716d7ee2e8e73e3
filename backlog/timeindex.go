package backlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"
)

// The time index maps offsets to wall-clock times, so an operator can see
// when the bytes of the backlog arrived and how old a replica's position is.
// It lives beside the segments as one file of fixed 16-byte records
// (offset, unix nanoseconds), each written with a single write: a kill -9
// loses nothing the kernel has, and a torn last record is ignored on read.
// One record is kept per second at most, and the file is compacted when it
// reaches timeIndexMax records, so its size stays bounded; the newest
// timeIndexMax/2 records are never thinned.
const (
	timeIndexName  = "timeindex"
	timeIndexMagic = "RPTIM001"
	timeRecordSize = 16
	timeIndexMax   = 1 << 16 // 1 MiB: 18 hours at one record a second before thinning
	timeResolution = time.Second
)

// TimePoint says that the byte at Offset was appended at Time.
type TimePoint struct {
	Offset int64
	Time   time.Time
}

// timeIndex is owned by the log's writer; readers take mu, which is never
// held across the file's I/O (fmu is): INFO asks it for times, and must
// answer while the disk does not.
type timeIndex struct {
	path string
	fmu  sync.Mutex
	f    *os.File // nil after an I/O error: times are a help, never a reason to stop

	mu     sync.RWMutex
	points []TimePoint
	last   time.Time // of the last append, whether or not it made a record
}

func timeIndexPath(logDir string) string { return filepath.Join(logDir, timeIndexName) }

// openTimeIndex loads the index of a log dir, creating it if needed. Points
// at or past end date bytes that recovery cut off, or that a crash kept
// from being written: they go, so offsets stay in order as appends resume.
func openTimeIndex(logDir string, end int64) *timeIndex {
	ti := &timeIndex{path: timeIndexPath(logDir)}
	ti.points, _ = ReadTimeIndex(logDir)
	f, err := os.OpenFile(ti.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return ti
	}
	ti.f = f
	keep := sort.Search(len(ti.points), func(i int) bool { return ti.points[i].Offset >= end })
	if len(ti.points) == 0 || len(ti.points) >= timeIndexMax || keep < len(ti.points) {
		ti.points = ti.thin(ti.points[:keep])
		ti.rewrite(ti.points)
	} else {
		// Drop a torn trailing record so that appends stay aligned.
		f.Truncate(int64(len(timeIndexMagic) + len(ti.points)*timeRecordSize))
		f.Seek(0, io.SeekEnd)
	}
	if n := len(ti.points); n > 0 {
		ti.last = ti.points[n-1].Time
	}
	return ti
}

// cutFrom forgets the points at or past end, after the log was cut back
// there, so that offsets stay in order as appends resume.
func (ti *timeIndex) cutFrom(end int64) {
	ti.mu.Lock()
	keep := sort.Search(len(ti.points), func(i int) bool { return ti.points[i].Offset >= end })
	cut := keep < len(ti.points)
	if cut {
		ti.points = ti.points[:keep:keep]
	}
	points := ti.points
	ti.mu.Unlock()
	if cut {
		ti.rewrite(points)
	}
}

// note records that the byte at off is being appended now.
func (ti *timeIndex) note(off int64, now time.Time) {
	ti.mu.Lock()
	ti.last = now
	// One point per wall-clock second with appends, its first append: the
	// bytes before it are exactly those appended before that second, which
	// is what a restore --to-time needs.
	if n := len(ti.points); n > 0 && now.Truncate(timeResolution).Equal(ti.points[n-1].Time.Truncate(timeResolution)) {
		ti.mu.Unlock()
		return
	}
	p := TimePoint{Offset: off, Time: now}
	ti.points = append(ti.points, p)
	full := len(ti.points) >= timeIndexMax
	if full {
		ti.points = ti.thin(ti.points)
	}
	points := ti.points
	ti.mu.Unlock()
	if full {
		ti.rewrite(points)
		return
	}
	ti.fmu.Lock()
	defer ti.fmu.Unlock()
	if ti.f != nil {
		if _, err := ti.f.Write(encodeTimePoint(nil, p)); err != nil {
			ti.f.Close()
			ti.f = nil
		}
	}
}

// trimBelow forgets points no longer needed for offsets from first on: the
// last point at or below first still dates the first retained byte.
func (ti *timeIndex) trimBelow(first int64) []TimePoint {
	i := sort.Search(len(ti.points), func(i int) bool { return ti.points[i].Offset > first })
	if i > 0 {
		i--
	}
	return ti.points[i:]
}

// thin drops every other point of the older half, keeping the first, when
// trimming alone does not bound the file: the newest timeIndexMax/2
// points always stay, so recent times (what a restore --to-time mostly
// wants) stay exact to the second, and older ones coarsen step by step.
func (ti *timeIndex) thin(points []TimePoint) []TimePoint {
	if len(points) < timeIndexMax/2 {
		return points
	}
	mid := len(points) - timeIndexMax/2
	out := make([]TimePoint, 0, mid/2+1+timeIndexMax/2)
	for i := 0; i < mid; i += 2 {
		out = append(out, points[i])
	}
	return append(out, points[mid:]...)
}

// rewrite replaces the file with points, via temp+rename so a crash leaves
// either the old or the new file whole. Only the writer calls it, without
// mu: points is a slice nobody changes in place.
func (ti *timeIndex) rewrite(points []TimePoint) {
	ti.fmu.Lock()
	defer ti.fmu.Unlock()
	buf := []byte(timeIndexMagic)
	for _, p := range points {
		buf = encodeTimePoint(buf, p)
	}
	if ti.f != nil {
		ti.f.Close()
		ti.f = nil
	}
	tmp := ti.path + ".tmp"
	tf, err := createTemp(tmp)
	if err != nil {
		return
	}
	_, err = tf.Write(buf)
	if cerr := tf.Close(); err != nil || cerr != nil {
		return
	}
	if err := os.Rename(tmp, ti.path); err != nil {
		return
	}
	f, err := os.OpenFile(ti.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err == nil {
		ti.f = f
	}
}

// compact applies the log's retention to the index.
func (ti *timeIndex) compact(first int64) {
	ti.mu.Lock()
	if len(ti.points) < timeIndexMax/2 {
		ti.mu.Unlock()
		return
	}
	ti.points = ti.thin(ti.trimBelow(first))
	points := ti.points
	ti.mu.Unlock()
	ti.rewrite(points)
}

// at returns when the byte at off arrived: the time of the last point at or
// before it, which is at most timeResolution early while appends are steady.
func (ti *timeIndex) at(off int64) (time.Time, bool) {
	ti.mu.RLock()
	defer ti.mu.RUnlock()
	return pointAt(ti.points, off)
}

func pointAt(points []TimePoint, off int64) (time.Time, bool) {
	i := sort.Search(len(points), func(i int) bool { return points[i].Offset > off })
	if i == 0 {
		return time.Time{}, false
	}
	return points[i-1].Time, true
}

func (ti *timeIndex) lastAppend() time.Time {
	ti.mu.RLock()
	defer ti.mu.RUnlock()
	return ti.last
}

func (ti *timeIndex) close() {
	ti.fmu.Lock()
	defer ti.fmu.Unlock()
	if ti.f != nil {
		ti.f.Close()
		ti.f = nil
	}
}

func encodeTimePoint(dst []byte, p TimePoint) []byte {
	var rec [timeRecordSize]byte
	binary.LittleEndian.PutUint64(rec[0:8], uint64(p.Offset))
	binary.LittleEndian.PutUint64(rec[8:16], uint64(p.Time.UnixNano()))
	return append(dst, rec[:]...)
}

// ReadTimeIndex reads the time index of a log dir, for tools that run
// beside or without the proxy. A torn last record is ignored.
func ReadTimeIndex(logDir string) ([]TimePoint, error) {
	path := timeIndexPath(logDir)
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read time index %s: %w", path, err)
	}
	if len(raw) < len(timeIndexMagic) || string(raw[:len(timeIndexMagic)]) != timeIndexMagic {
		return nil, fmt.Errorf("time index %s: %w", path, errBadTimeIndex)
	}
	raw = raw[len(timeIndexMagic):]
	points := make([]TimePoint, 0, len(raw)/timeRecordSize)
	for len(raw) >= timeRecordSize {
		points = append(points, TimePoint{
			Offset: int64(binary.LittleEndian.Uint64(raw[0:8])),
			Time:   time.Unix(0, int64(binary.LittleEndian.Uint64(raw[8:16]))),
		})
		raw = raw[timeRecordSize:]
	}
	return points, nil
}

var errBadTimeIndex = errors.New("bad header")

// TimeAt returns when the byte at off was appended, to within a second
// while the stream flows; false when the index does not reach back that far.
func (l *Log) TimeAt(off int64) (time.Time, bool) { return l.times.at(off) }

// LastAppend is when bytes were last appended to this log (zero: never,
// since it was opened and the index was empty).
func (l *Log) LastAppend() time.Time { return l.times.lastAppend() }
