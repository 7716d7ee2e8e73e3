package backlog

import (
	"fmt"
	"time"
)

// ReadMeta reads a data dir's meta file, for tools that run beside or
// without the proxy.
func ReadMeta(dataDir string) (Meta, error) { return readMeta(Layout(dataDir).Meta()) }

// Extent is the offset range a log dir holds on disk, as its files say,
// without checking CRCs (Verify does that).
type Extent struct {
	Segments     int
	First, End   int64
	LastModified time.Time // of the last segment: when its last byte was written
}

// ReadExtent lists the segments of a log dir.
func ReadExtent(logDir string, start int64) (Extent, error) {
	segs, err := scanSegments(logDir)
	if err != nil {
		return Extent{}, fmt.Errorf("read backlog: %w", err)
	}
	ext := Extent{Segments: len(segs), First: start, End: start}
	if n := len(segs); n > 0 {
		ext.First, ext.End, ext.LastModified = segs[0].first, segs[n-1].end(), segs[n-1].sealed
	}
	return ext, nil
}

// TimeOf returns when the byte at off arrived, from a time index read with
// ReadTimeIndex.
func TimeOf(points []TimePoint, off int64) (time.Time, bool) { return pointAt(points, off) }
