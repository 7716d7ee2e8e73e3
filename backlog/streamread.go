package backlog

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// StreamReader reads a log dir's stream from another process, beside the
// proxy that writes it, without the data dir's lock. It opens every segment
// it needs at once and holds the files, so retention removing them
// meanwhile changes nothing, and it reads only whole index records whose
// CRC-32C matches: the writer appends data before its index record, so a
// record in the index has its bytes in the file.
type StreamReader struct {
	segs       []heldSegment
	first, end int64
}

type heldSegment struct {
	first int64
	data  *os.File
	recs  []record
	size  int64 // bytes covered by complete records
}

// OpenStream holds the segments of logDir that cover offsets from on. It
// fails with ErrTrimmed when from is no longer on disk. A segment removed
// between the listing and its opening is retried with a new listing.
func OpenStream(logDir string, from int64) (*StreamReader, error) {
	for try := 0; ; try++ {
		r, err := openStream(logDir, from)
		if err == nil || !errors.Is(err, os.ErrNotExist) || try == 3 {
			return r, err
		}
	}
}

func openStream(logDir string, from int64) (*StreamReader, error) {
	segs, err := scanSegments(logDir)
	if err != nil {
		return nil, err
	}
	r := &StreamReader{first: from, end: from}
	for _, s := range segs {
		if s.end() <= from && s.first < from {
			continue // entirely before from (size from the listing is only a hint)
		}
		h, err := holdSegment(logDir, s.first)
		if err != nil {
			r.Close()
			return nil, err
		}
		if len(r.segs) == 0 {
			if h.first > from || h.first+h.size < from {
				h.data.Close()
				r.Close()
				return nil, fmt.Errorf("offset %d: the log in %s starts at %d: %w", from, logDir, h.first, ErrTrimmed)
			}
			r.first = h.first
		} else if h.first != r.end {
			h.data.Close()
			break // a gap, or a segment just rolled and not yet written
		}
		r.segs = append(r.segs, h)
		r.end = h.first + h.size
	}
	if len(r.segs) == 0 && from != r.end {
		return nil, fmt.Errorf("offset %d: no segment in %s holds it: %w", from, logDir, ErrTrimmed)
	}
	return r, nil
}

func holdSegment(logDir string, first int64) (heldSegment, error) {
	path := segmentPath(logDir, first)
	idx, err := os.Open(indexPath(path))
	if err != nil {
		return heldSegment{}, fmt.Errorf("open index of segment %d: %w", first, err)
	}
	defer idx.Close()
	data, err := os.Open(path)
	if err != nil {
		return heldSegment{}, fmt.Errorf("open segment %d: %w", first, err)
	}
	recs, _, err := readIndex(idx.Name())
	if err != nil {
		data.Close()
		return heldSegment{}, err
	}
	info, err := data.Stat()
	if err != nil {
		data.Close()
		return heldSegment{}, fmt.Errorf("stat segment %d: %w", first, err)
	}
	h := heldSegment{first: first, data: data}
	for _, rec := range recs {
		if h.size+int64(rec.length) > info.Size() {
			break
		}
		h.recs = append(h.recs, rec)
		h.size += int64(rec.length)
	}
	return h, nil
}

// Bounds is the held range [first, end): end is the end of the last whole
// record when the reader was opened.
func (r *StreamReader) Bounds() (first, end int64) { return r.first, r.end }

// Range returns a reader of the bytes [from, to), each record checked
// against its CRC-32C before its bytes are handed out.
func (r *StreamReader) Range(from, to int64) (io.Reader, error) {
	if from < r.first || to > r.end || from > to {
		return nil, fmt.Errorf("range [%d, %d) outside the held stream [%d, %d)", from, to, r.first, r.end)
	}
	return &rangeReader{r: r, off: from, to: to}, nil
}

// Close releases the held files.
func (r *StreamReader) Close() error {
	for _, h := range r.segs {
		h.data.Close()
	}
	r.segs = nil
	return nil
}

type rangeReader struct {
	r       *StreamReader
	off, to int64
	buf     []byte // verified bytes from off on
	// The record after the last one read: segment si, record ri at recOff.
	si, ri int
	recOff int64
	placed bool
}

func (rr *rangeReader) Read(p []byte) (int, error) {
	if len(rr.buf) == 0 {
		if rr.off >= rr.to {
			return 0, io.EOF
		}
		if err := rr.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, rr.buf)
	rr.buf = rr.buf[n:]
	rr.off += int64(n)
	return n, nil
}

// place finds the record holding off, once; reads then go forward.
func (rr *rangeReader) place() {
	rr.placed = true
	for rr.si = 0; rr.si < len(rr.r.segs); rr.si++ {
		h := rr.r.segs[rr.si]
		if rr.off >= h.first+h.size {
			continue
		}
		rr.recOff = h.first
		for rr.ri = 0; rr.ri < len(h.recs); rr.ri++ {
			if rr.off < rr.recOff+int64(h.recs[rr.ri].length) {
				return
			}
			rr.recOff += int64(h.recs[rr.ri].length)
		}
	}
}

// fill reads and verifies the record holding off, keeping its bytes from
// off up to to.
func (rr *rangeReader) fill() error {
	if !rr.placed {
		rr.place()
	}
	for rr.si < len(rr.r.segs) && rr.ri >= len(rr.r.segs[rr.si].recs) {
		rr.si, rr.ri = rr.si+1, 0
		if rr.si < len(rr.r.segs) {
			rr.recOff = rr.r.segs[rr.si].first
		}
	}
	if rr.si >= len(rr.r.segs) {
		return fmt.Errorf("offset %d: %w", rr.off, io.ErrUnexpectedEOF)
	}
	h, rec := rr.r.segs[rr.si], rr.r.segs[rr.si].recs[rr.ri]
	start, end := rr.recOff, rr.recOff+int64(rec.length)
	b := make([]byte, rec.length)
	if _, err := h.data.ReadAt(b, start-h.first); err != nil {
		return fmt.Errorf("read segment %d at %d: %w", h.first, start-h.first, err)
	}
	if crc32.Checksum(b, castagnoli) != rec.crc {
		return fmt.Errorf("segment %d: bytes %d..%d fail their CRC (damaged, or cut back by the proxy while read): %w", h.first, start, end, ErrDamaged)
	}
	rr.buf = b[rr.off-start : min(end, rr.to)-start]
	rr.ri, rr.recOff = rr.ri+1, end
	return nil
}
