package backlog

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// Cursor reads a Log from an offset at its own pace. Each cursor has its own
// file handles, so many replicas read concurrently. What it sends from disk
// is read into memory, checked record by record against the index's
// CRC-32C, and those very bytes are written: a byte damaged on disk (or in
// the page cache) at any time before a send is never sent, whoever read it
// before.
type Cursor struct {
	log  *Log
	off  int64
	seg  *segment // the segment f holds; nil when none is open
	f    *os.File
	idx  *os.File
	cuts int64 // the log's cut count when f was opened
	at   recordPos
	// rest is the checked tail of a record a send split (a rate-limited
	// replica's bursts are smaller than a record): the next send starts
	// with it instead of reading and checking the record again.
	rest    []byte
	restOff int64 // the offset of rest's first byte
	restBuf []byte
	// checking holds the records of one read, kept for the next one.
	checking []record
}

// recordPos is where the cursor stands in its segment's index: record
// number rec starts at byte start of the segment. A batch of decoded
// records from number base on saves a read of the index per record.
type recordPos struct {
	rec, start int64
	base       int64
	recs       []record
}

// sendBufBytes holds the largest record the upstream link appends (one
// network read, 512 KiB), so a send reads whole records in one pread;
// a larger record gets a buffer of its own.
const sendBufBytes = 512 << 10

// sendBufsKept is how many send buffers a log keeps between sends. Sends
// hold one only while they read, check and write, so few run at once; a
// free list this small keeps the proxy's memory flat, where a sync.Pool
// would let the garbage collector free them and allocate them again.
const sendBufsKept = 2

// sendBuf takes a buffer for one send; putSendBuf gives it back.
func (l *Log) sendBuf() []byte {
	select {
	case b := <-l.sendBufs:
		return b
	default:
		return make([]byte, sendBufBytes)
	}
}

func (l *Log) putSendBuf(b []byte) {
	select {
	case l.sendBufs <- b:
	default: // enough kept: this one goes to the garbage collector
	}
}

// NewCursor positions a cursor at off, which must lie in [first, end]. It
// opens the segment holding off at once: a replica still receiving its RDB
// keeps the bytes that must follow it, whatever retention does meanwhile.
func (l *Log) NewCursor(off int64) (*Cursor, error) {
	c := &Cursor{log: l, off: off, cuts: l.cuts.Load()}
	seg, _, err := l.locate(off)
	if err != nil {
		return nil, err
	}
	if seg != nil {
		if err := c.open(seg); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Offset is the offset of the next byte the cursor will send.
func (c *Cursor) Offset() int64 { return c.off }

// Log returns the log the cursor reads.
func (c *Cursor) Log() *Log { return c.log }

// Send copies up to max available bytes to w and advances. It returns 0, nil
// when the cursor is at the end: wait on Log.Changed and call again. Bytes
// that fail their checksum are not sent: the log is cut before them and
// Send returns ErrDamaged.
//
// The bytes go through memory rather than sendfile: a check of the page
// cache followed by a sendfile of the same range would send whatever the
// file holds by then, and a write into the file (or a page evicted and
// read back from a failing disk) between the two would go out unchecked.
// The check already copies every byte into memory, so writing from that
// copy costs one more copy into the socket, not another read.
func (c *Cursor) Send(w io.Writer, max int64) (int64, error) {
	seg, n, err := c.find()
	if err != nil || n == 0 {
		return 0, err
	}
	// Records ending by limit are whole in the index: an append writes
	// its record there before the log's end moves past its bytes.
	limit := c.off - seg.first + n
	n = min(n, max)
	if len(c.rest) > 0 && c.restOff == c.off {
		k, err := w.Write(c.rest[:min(n, int64(len(c.rest)))])
		c.off += int64(k)
		c.rest, c.restOff = c.rest[k:], c.off
		return int64(k), err
	}
	c.rest = nil
	buf := c.log.sendBuf()
	defer c.log.putSendBuf(buf)
	total := int64(0)
	for total < n {
		pos := c.off - seg.first
		p, err := c.readChecked(seg, pos, n-total, limit, total > 0, buf)
		if err != nil {
			return total, c.readFailed(seg, err)
		}
		if len(p) == 0 {
			break // the next record does not fit in what is left of max
		}
		k, err := w.Write(p)
		c.off += int64(k)
		total += int64(k)
		if err != nil || k < len(p) {
			return total, err // a writer that takes what fits now stops here
		}
	}
	return total, nil
}

// readFailed turns a failed read into Send's result: a cut under the read
// is no error (the next send finds the new end), a checksum mismatch cuts
// the log at the damaged segment, anything else is a disk error.
func (c *Cursor) readFailed(seg *segment, err error) error {
	if c.cutSince() {
		return nil
	}
	var d *damage
	if errors.As(err, &d) {
		c.log.damaged(seg, d.problem)
		return fmt.Errorf("segment %s: %s: %w", c.f.Name(), d.problem, ErrDamaged)
	}
	c.log.log.Error().Err(err).Msg("disk error reading the backlog; the replica is dropped and may resync")
	return err
}

// readChecked reads the whole records holding [pos, pos+n) of seg, as many
// as fit in buf (at least one, unless more is set: then a record that does
// not fit whole is left for the next call), checks each against its
// CRC-32C, and returns the checked bytes from pos on, at most n.
func (c *Cursor) readChecked(seg *segment, pos, n, limit int64, more bool, buf []byte) ([]byte, error) {
	if err := c.seekRecord(pos, limit); err != nil {
		return nil, err
	}
	start, end := c.at.start, c.at.start
	recs := c.checking[:0]
	defer func() { c.checking = recs[:0] }()
	for i := c.at.rec; end < pos+n; i++ {
		r, err := c.recordAt(i, end, limit)
		if err != nil {
			return nil, err
		}
		if end+int64(r.length) > limit {
			// Appends index whole records only: a longer one is a damaged
			// index, whose length must not size a read.
			return nil, &damage{fmt.Sprintf("index record %d covers bytes %d..%d, past the %d the segment holds", i, end, end+int64(r.length), limit)}
		}
		fits := end+int64(r.length)-start <= int64(len(buf)) && end+int64(r.length) <= pos+n
		if !fits && (len(recs) > 0 || more) {
			break
		}
		recs = append(recs, r)
		end += int64(r.length)
		if !fits {
			break
		}
	}
	if len(recs) == 0 {
		return nil, nil
	}
	if end-start > int64(len(buf)) {
		buf = make([]byte, end-start) // one record larger than any network read
	}
	b := buf[:end-start]
	if _, err := c.f.ReadAt(b, start); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("read segment %s at %d: %w", c.f.Name(), start, err)
	}
	at := int64(0)
	for _, r := range recs {
		rb := b[at : at+int64(r.length)]
		if crc32.Checksum(rb, castagnoli) != r.crc {
			from := start + at
			return nil, &damage{fmt.Sprintf("checksum mismatch in bytes %d..%d (stream offsets %d..%d)",
				from, from+int64(r.length), seg.first+from, seg.first+from+int64(r.length))}
		}
		at += int64(r.length)
	}
	if pos+n < end {
		c.restBuf = append(c.restBuf[:0], b[pos+n-start:]...)
		c.rest, c.restOff = c.restBuf, seg.first+pos+n
	}
	return b[pos-start : min(end, pos+n)-start], nil
}

// seekRecord moves the cursor's place in the index to the record holding
// pos; limit is how far the segment's bytes (and so its records) go.
func (c *Cursor) seekRecord(pos, limit int64) error {
	if pos < c.at.start {
		c.at = recordPos{recs: c.at.recs[:0]}
	}
	for {
		r, err := c.recordAt(c.at.rec, c.at.start, limit)
		if err != nil {
			return err
		}
		if pos < c.at.start+int64(r.length) {
			return nil
		}
		c.at.start += int64(r.length)
		c.at.rec++
	}
}

// recordAt returns record number i of the index, whose bytes start at
// byte start of the segment, reading a batch of records when i is not in
// the one held. Only records whose bytes end by limit are kept: in the
// active segment's index, a record after them may be half written.
func (c *Cursor) recordAt(i, start, limit int64) (record, error) {
	if k := i - c.at.base; k >= 0 && k < int64(len(c.at.recs)) {
		return c.at.recs[k], nil
	}
	var raw [512 * recordSize]byte
	n, err := c.idx.ReadAt(raw[:], int64(len(indexMagic))+i*recordSize)
	recs := decodeRecords(raw[:n-n%recordSize], c.at.recs[:0])
	end := start
	for k, r := range recs {
		end += int64(r.length)
		if r.seal() || (end > limit && k > 0) {
			recs = recs[:k]
			break
		}
	}
	c.at.base, c.at.recs = i, recs
	if len(recs) == 0 {
		if err == nil || errors.Is(err, io.EOF) {
			err = fmt.Errorf("has no record %d for bytes up to %d", i, limit)
		}
		return record{}, fmt.Errorf("read index %s: %w", c.idx.Name(), err)
	}
	return recs[0], nil
}

// cutSince says whether the log was cut since find looked: a cut that
// truncated the file under a send ends it short, which is no disk error.
// What was sent before the new end stands; the next send finds the cut,
// and bytes sent past it are the ones the master sends again.
func (c *Cursor) cutSince() bool { return c.log.cuts.Load() != c.cuts }

// find opens the segment holding the cursor's offset and says how many
// bytes it has from there. A cut between finding the segment and opening
// its file (it removes files) is no reason to give up: look again.
func (c *Cursor) find() (*segment, int64, error) {
	for {
		g := c.log.cuts.Load()
		if g != c.cuts {
			c.closeFile() // the files may have been truncated or moved aside
			c.cuts = g
		}
		seg, n, err := c.log.locate(c.off)
		if errors.Is(err, ErrTrimmed) {
			seg, n, err = c.held()
		}
		if err != nil || n == 0 {
			return nil, 0, err
		}
		err = c.open(seg)
		if errors.Is(err, ErrTrimmed) && c.log.cuts.Load() != g {
			continue
		}
		return seg, n, err
	}
}

// SendRecent sends up to max bytes from memory when the cursor is inside
// the log's last append, the bytes the writer had in hand: a caught-up
// reader then costs one write, no disk read and no re-verification (they
// never left memory). ok is false, and nothing is sent, when the cursor is
// anywhere else; Send then serves it from disk, verified. Both advance the
// same offset, so switching between them never skips or repeats a byte.
// write may take less than it is given with no error (a full socket).
func (c *Cursor) SendRecent(write func([]byte) (int, error), max int64) (n int64, ok bool, err error) {
	b, p := c.log.recentFrom(c.off, c.cuts)
	if b == nil {
		return 0, false, nil
	}
	defer b.release()
	c.keep()
	k, err := write(p[:min(int64(len(p)), max)])
	c.off += int64(k)
	return int64(k), true, err
}

// keep holds the segment the cursor is in while it sends from memory, as
// a disk send would: if the replica then falls behind while retention
// removes that file, the open descriptor still has its bytes (the pinning
// policy drops such a replica after a while, naming the segment). A
// segment the cursor has passed is let go, or it would keep a removed
// file's disk space for as long as the replica keeps up.
func (c *Cursor) keep() {
	if c.seg != nil && !c.log.passed(c.seg, c.off) {
		return
	}
	c.closeFile()
	if seg, n, err := c.log.locate(c.off); err == nil && n > 0 {
		c.open(seg) // a failure leaves nothing held; a disk send reports it
	}
}

// held serves from the segment the cursor has open after retention removed
// it: the open file still has its bytes.
func (c *Cursor) held() (*segment, int64, error) {
	if c.f == nil || c.off < c.seg.first {
		return nil, 0, fmt.Errorf("offset %d: %w", c.off, ErrTrimmed)
	}
	info, err := c.f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("stat held segment %d: %w", c.seg.first, err)
	}
	if left := info.Size() - (c.off - c.seg.first); left > 0 {
		return c.seg, left, nil
	}
	return nil, 0, fmt.Errorf("offset %d past a removed segment: %w", c.off, ErrTrimmed)
}

// open makes f and idx the files of seg. The index is held open with the
// data, as verification needs it even after retention removed both.
func (c *Cursor) open(seg *segment) error {
	if c.seg == seg && c.f != nil {
		return nil
	}
	c.closeFile()
	path := segmentPath(c.log.dir, seg.first)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("segment %d removed: %w", seg.first, ErrTrimmed)
	}
	if err != nil {
		return fmt.Errorf("open segment %d: %w", seg.first, err)
	}
	idx, err := os.Open(indexPath(path))
	if errors.Is(err, os.ErrNotExist) {
		f.Close()
		return fmt.Errorf("segment %d removed: %w", seg.first, ErrTrimmed)
	}
	if err != nil {
		f.Close()
		return fmt.Errorf("open index of segment %d: %w", seg.first, err)
	}
	c.f, c.idx, c.seg = f, idx, seg
	c.at = recordPos{recs: c.at.recs[:0]}
	return nil
}

func (c *Cursor) closeFile() {
	if c.f != nil {
		c.f.Close()
		c.idx.Close()
		c.f, c.idx, c.seg = nil, nil, nil
	}
	c.at = recordPos{recs: c.at.recs[:0]}
	c.rest = nil
}

// Close releases the cursor's file handles.
func (c *Cursor) Close() error {
	c.closeFile()
	return nil
}
