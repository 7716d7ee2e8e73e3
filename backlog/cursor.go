package backlog

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Cursor reads a Log from an offset at its own pace. Each cursor has its own
// file handles, so many replicas read concurrently, and copies go from the
// file to the writer with io.Copy, which is sendfile when the writer is a TCP
// connection: the stream never passes through the proxy's memory. Bytes are
// verified against their index CRCs before their first send by any cursor.
type Cursor struct {
	log  *Log
	off  int64
	seg  *segment // the segment f holds; nil when none is open
	f    *os.File
	idx  *os.File
	cuts int64 // the log's cut count when f was opened
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
func (c *Cursor) Send(w io.Writer, max int64) (int64, error) {
	seg, n, err := c.find()
	if err != nil || n == 0 {
		return 0, err
	}
	n = min(n, max)
	pos := c.off - seg.first
	if err := seg.verifyTo(pos+n, c.f, c.idx); err != nil {
		if c.cutSince() {
			return 0, nil // the index was cut after find: look again
		}
		var d *damage
		if errors.As(err, &d) {
			c.log.damaged(seg, d.problem)
			return 0, fmt.Errorf("segment %s: %s: %w", c.f.Name(), d.problem, ErrDamaged)
		}
		c.log.log.Error().Err(err).Msg("disk error reading the backlog; the replica is dropped and may resync")
		return 0, err
	}
	// Seek before every copy: after a short write the file position says
	// nothing about what the writer took.
	if _, err := c.f.Seek(pos, io.SeekStart); err != nil {
		return 0, fmt.Errorf("seek segment %d to %d: %w", seg.first, pos, err)
	}
	sent, err := io.Copy(w, &io.LimitedReader{R: c.f, N: n})
	c.off += sent
	if err == nil && sent < n && !c.cutSince() {
		err = fmt.Errorf("segment %d: %w", seg.first, io.ErrUnexpectedEOF)
	}
	return sent, err
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
func (c *Cursor) SendRecent(w io.Writer, max int64) (n int64, ok bool, err error) {
	b, p := c.log.recentFrom(c.off, c.cuts)
	if b == nil {
		return 0, false, nil
	}
	defer b.release()
	c.keep()
	k, err := w.Write(p[:min(int64(len(p)), max)])
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
	return nil
}

func (c *Cursor) closeFile() {
	if c.f != nil {
		c.f.Close()
		c.idx.Close()
		c.f, c.idx, c.seg = nil, nil, nil
	}
}

// Close releases the cursor's file handles.
func (c *Cursor) Close() error {
	c.closeFile()
	return nil
}
