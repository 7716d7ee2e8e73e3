package backlog

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Cursor reads a Log from an offset at its own pace. Each cursor has its own
// file handle, so many replicas read concurrently, and copies go from the file
// to the writer with io.Copy, which is sendfile when the writer is a TCP
// connection: the stream never passes through the proxy's memory.
type Cursor struct {
	log  *Log
	off  int64
	f    *os.File
	fseg int64 // first offset of the segment f holds
	fpos int64 // f's file position
}

// NewCursor positions a cursor at off, which must lie in [first, end]. It
// opens the segment holding off at once: a replica still receiving its RDB
// keeps the bytes that must follow it, whatever retention does meanwhile.
func (l *Log) NewCursor(off int64) (*Cursor, error) {
	first, n, err := l.locate(off)
	if err != nil {
		return nil, err
	}
	c := &Cursor{log: l, off: off, fseg: -1}
	if n > 0 || first > 0 {
		if err := c.position(first); err != nil {
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
// when the cursor is at the end: wait on Log.Changed and call again.
func (c *Cursor) Send(w io.Writer, max int64) (int64, error) {
	first, n, err := c.log.locate(c.off)
	if errors.Is(err, ErrTrimmed) {
		first, n, err = c.held()
	}
	if err != nil || n == 0 {
		return 0, err
	}
	if n > max {
		n = max
	}
	if err := c.position(first); err != nil {
		return 0, err
	}
	sent, err := io.Copy(w, &io.LimitedReader{R: c.f, N: n})
	c.off += sent
	c.fpos += sent
	if err == nil && sent < n {
		err = fmt.Errorf("segment %d: %w", first, io.ErrUnexpectedEOF)
	}
	return sent, err
}

// held serves from the segment the cursor has open after retention removed
// it: the open file still has its bytes.
func (c *Cursor) held() (first, n int64, err error) {
	if c.f == nil || c.off < c.fseg {
		return 0, 0, fmt.Errorf("offset %d: %w", c.off, ErrTrimmed)
	}
	info, err := c.f.Stat()
	if err != nil {
		return 0, 0, fmt.Errorf("stat held segment %d: %w", c.fseg, err)
	}
	if left := info.Size() - (c.off - c.fseg); left > 0 {
		return c.fseg, left, nil
	}
	return 0, 0, fmt.Errorf("offset %d past a removed segment: %w", c.off, ErrTrimmed)
}

func (c *Cursor) position(first int64) error {
	if c.fseg != first {
		c.closeFile()
		f, err := os.Open(segmentPath(c.log.dir, first))
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("segment %d removed: %w", first, ErrTrimmed)
		}
		if err != nil {
			return fmt.Errorf("open segment %d: %w", first, err)
		}
		c.f, c.fseg, c.fpos = f, first, 0
	}
	want := c.off - first
	if c.fpos != want {
		if _, err := c.f.Seek(want, io.SeekStart); err != nil {
			return fmt.Errorf("seek segment %d to %d: %w", first, want, err)
		}
		c.fpos = want
	}
	return nil
}

func (c *Cursor) closeFile() {
	if c.f != nil {
		c.f.Close()
		c.f = nil
		c.fseg = -1
	}
}

// Close releases the cursor's file handle.
func (c *Cursor) Close() error {
	c.closeFile()
	return nil
}
