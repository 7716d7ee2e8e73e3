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

// NewCursor positions a cursor at off, which must lie in [first, end].
func (l *Log) NewCursor(off int64) (*Cursor, error) {
	if _, _, err := l.locate(off); err != nil {
		return nil, err
	}
	return &Cursor{log: l, off: off, fseg: -1}, nil
}

// Offset is the offset of the next byte the cursor will send.
func (c *Cursor) Offset() int64 { return c.off }

// Log returns the log the cursor reads.
func (c *Cursor) Log() *Log { return c.log }

// Send copies up to max available bytes to w and advances. It returns 0, nil
// when the cursor is at the end: wait on Log.Changed and call again.
func (c *Cursor) Send(w io.Writer, max int64) (int64, error) {
	first, n, err := c.log.locate(c.off)
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

// ReadAt-style access for small reads (tests, verification).
func (c *Cursor) Read(p []byte) (int, error) {
	first, n, err := c.log.locate(c.off)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > n {
		p = p[:n]
	}
	if err := c.position(first); err != nil {
		return 0, err
	}
	got, err := io.ReadFull(c.f, p)
	c.off += int64(got)
	c.fpos += int64(got)
	return got, err
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
