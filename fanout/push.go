package fanout

import (
	"context"
	"syscall"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/rawsock"
)

// follower lets the upstream writer push to this replica while it is caught
// up, with non-blocking writes straight to its socket; nil when the stream
// cannot take them. A compressed or TLS stream has its own framing state,
// and a paced one must wait for its limiter, so those send from their own
// goroutine (a compressed one is fed through a buffer instead: see
// compressedFollower).
func (r *replica) follower() *backlog.Follower {
	raw := r.plainSocket()
	if raw == nil || r.limiter != nil || r.watch != nil {
		// A watched stream is scanned by its own sender, off the
		// upstream writer's path.
		return nil
	}
	return backlog.NewFollower(func(p []byte, off int64) int {
		r.maxAck.Store(off + int64(len(p)) - 1)
		n := rawsock.WriteNow(raw, p)
		r.sentBytes.Add(int64(n))
		r.sentOff.Store(off + int64(n))
		r.maxAck.Store(off + int64(n) - 1)
		r.srv.stats.SentFromMemory.Add(int64(n))
		return n
	})
}

// plainSocket is the socket under an uncompressed stream on a plain TCP
// connection, for writes that never wait; nil for TLS or zstd, whose
// framing state allows no write that stops halfway.
func (r *replica) plainSocket() syscall.RawConn {
	if r.cw != nil {
		return nil
	}
	return rawsock.Of(r.conn)
}

// memoryWriter sends bytes held in the log's memory without waiting for
// the socket, so a replica that stops reading keeps no append's buffer: a
// short send, with no error (Cursor.SendRecent), marks the socket full, and
// the rest goes from the backlog file, whose blocked send holds no memory.
type memoryWriter struct {
	raw   syscall.RawConn
	full  *bool
	watch *cmdWatch
}

func (w *memoryWriter) send(p []byte) (int, error) {
	n := rawsock.WriteNow(w.raw, p)
	*w.full = n < len(p)
	w.watch.observe(p[:n])
	return n, nil
}

// follow waits while the writer pushes to the parked replica, until the
// writer hands it back (a short push, a cut, Close) or ctx ends, then takes
// the cursor back past what the writer sent.
func (r *replica) follow(ctx context.Context, cur *backlog.Cursor, f *backlog.Follower) error {
	select {
	case <-ctx.Done():
	case <-f.Woken():
	}
	cur.Unpark(f)
	if err := ctx.Err(); err != nil {
		return context.Cause(ctx)
	}
	return nil
}
