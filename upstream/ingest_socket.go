package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/rawsock"
	"golang.org/x/sys/unix"
)

// fromSocket reads the socket inside one RawRead, so the poller's
// readiness carries over from one read to the next: after a read that
// left the socket empty it waits for new bytes at once, instead of first
// trying one more read to hear EAGAIN, as a plain Read must. The reads
// themselves are raw system calls (internal/rawsock, where the rule for
// them is written): the socket never blocks.
//
// The repl-timeout deadline is armed once and, when it fires, checked
// against the time the link last finished storing what it read (or
// began to read): a busy link re-arms it every repl-timeout rather than at
// every read. It is not the time of the last byte: an append that stalls
// on the disk longer than repl-timeout, or a slow snapshot commit before
// the stream, is the proxy's silence, not the master's, and the bytes that
// came meanwhile wait in the socket. Nor is it reset by a read that finds
// nothing: each RawRead begins with one, and a silent master would then
// never be called silent.
//
// Closing the socket does not end the callback (it only fails the next
// wait, and the descriptor stays open while the callback runs), so the
// callback looks at ctx before each read: a proxy that is behind reads
// full buffers without ever waiting, and would otherwise go on storing
// the ended session's stream until it caught up.
func (in *ingest) fromSocket(ctx context.Context, c *watchedConn, raw syscall.RawConn) error {
	var b *backlog.Batch
	defer func() {
		if b != nil {
			b.Release()
		}
	}()
	waiting := time.Now()
	for {
		c.Conn.SetReadDeadline(waiting.Add(c.timeout))
		var ierr error
		err := raw.Read(func(fd uintptr) bool {
			for {
				if ctx.Err() != nil {
					ierr = fmt.Errorf("read stream: %w", context.Cause(ctx))
					return true
				}
				if b == nil {
					if b, ierr = in.l.store.NewBatch(upstreamReadBytes); ierr != nil {
						return true
					}
				}
				space := b.Space()
				n, err := rawsock.Read(fd, space)
				switch {
				case errors.Is(err, unix.EAGAIN):
					return false
				case errors.Is(err, unix.EINTR):
					continue
				case err != nil:
					ierr = fmt.Errorf("read stream: %w", err)
					return true
				case n == 0:
					ierr = io.EOF
					return true
				}
				c.noteRead(n)
				batch := b
				b = nil
				if ierr = in.take(batch, n); ierr != nil {
					return true
				}
				// After the append, not before: however long it took, the
				// master's silence is counted from here.
				waiting = time.Now()
				if n < len(space) {
					return false // the socket is empty: wait for its next bytes
				}
			}
		})
		if ierr != nil {
			return ierr
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && time.Since(waiting) < c.timeout {
			continue // bytes came since the deadline was armed
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("read stream: no data from master for %s (repl-timeout): %w", c.timeout, err)
		}
		if err != nil {
			return fmt.Errorf("read stream: %w", err)
		}
	}
}

// noteRead records n bytes read past the conn's own Read.
func (c *watchedConn) noteRead(n int) {
	c.lastIO.Store(time.Now().UnixNano())
	if c.wire != nil {
		c.wire.Add(int64(n))
	}
}
