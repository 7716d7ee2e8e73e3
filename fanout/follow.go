package fanout

import (
	"context"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/replproxy/replproxy/backlog"
)

// follower lets the upstream writer feed this replica while it is caught
// up, with non-blocking writes straight to its socket; nil when the stream
// cannot take them. A compressed or TLS stream has its own framing state,
// and a paced one must wait for its limiter, so those always send from
// their own goroutine.
func (r *replica) follower() *backlog.Follower {
	raw := r.plainSocket()
	if raw == nil || r.limiter != nil || r.watch != nil {
		// A watched stream is scanned by its own sender, off the
		// upstream writer's path.
		return nil
	}
	return backlog.NewFollower(func(p []byte, off int64) int {
		r.maxAck.Store(off + int64(len(p)) - 1)
		n := writeNow(raw, p)
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
	sc, ok := r.conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// memoryWriter sends bytes held in the log's memory without waiting for
// the socket: a replica that stops reading must not keep an append's
// buffer for as long as its blocked write lasts. A short write marks the
// socket full, and the rest goes from the backlog file, whose blocked
// send holds no memory.
type memoryWriter struct {
	raw   syscall.RawConn
	full  *bool
	watch *cmdWatch
}

// Write returns a short count with no error, unlike an io.Writer: only
// SendRecent calls it, and a socket error is met by the disk send.
func (w memoryWriter) Write(p []byte) (int, error) {
	n := writeNow(w.raw, p)
	*w.full = n < len(p)
	w.watch.observe(p[:n])
	return n, nil
}

// follow waits while the writer feeds the parked replica, until the writer
// hands it back (a short push, a cut, Close) or ctx ends, then takes the
// cursor back past what the writer sent.
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

// writeNow writes what the socket takes without waiting and returns how
// many bytes that was; an error counts as nothing more written, and the
// replica's own goroutine meets it on its next write. The write is a raw
// system call: the socket is non-blocking, so the scheduler has nothing to
// hand over while it runs. Raw calls go only to non-blocking sockets,
// never to files: one that sleeps in the kernel stops the whole process
// at the next GC (the rule, its reason and its test: readRaw in
// proxy/ingest_socket.go).
func writeNow(raw syscall.RawConn, p []byte) int {
	n := 0
	raw.Write(func(fd uintptr) bool {
		for n < len(p) {
			k, _, errno := unix.RawSyscall(unix.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[n])), uintptr(len(p)-n))
			if errno == unix.EINTR {
				continue
			}
			if errno != 0 || k == 0 {
				break
			}
			n += int(k)
		}
		return true // never wait for the socket: that is the sender's job
	})
	return n
}
