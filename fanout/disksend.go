package fanout

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/rawsock"
)

// sendFromDisk sends a replica on a plain socket its next bytes from the
// backlog. Each send reads and checks whole records in a buffer, so the
// sender first waits until the socket takes bytes, holding no buffer, then
// writes what the socket takes at once: a replica that stops reading must
// not keep a buffer for as long as its blocked write would last. The bytes
// a short write leaves are read and checked again at the next send.
func (r *replica) sendFromDisk(cur *backlog.Cursor, raw syscall.RawConn) (int64, error) {
	if err := waitWritable(raw); err != nil {
		return 0, err
	}
	w := &socketWriter{raw: raw, watch: r.watch}
	n, err := cur.Send(w, r.chunk())
	r.full = w.short
	return n, err
}

// socketWriter writes what the socket takes now and notes a short write;
// Cursor.Send stops at one.
type socketWriter struct {
	raw   syscall.RawConn
	short bool
	watch *cmdWatch
}

func (w *socketWriter) Write(p []byte) (int, error) {
	n := rawsock.WriteNow(w.raw, p)
	w.watch.observe(p[:n])
	w.short = w.short || n < len(p)
	return n, nil
}

// errReplicaSocket is a replica's socket in error (reset, or closed by it).
var errReplicaSocket = errors.New("replica connection closed or reset")

// waitWritable waits, under the connection's write deadline, until the
// socket takes bytes or is in error.
func waitWritable(raw syscall.RawConn) error {
	var sockErr error
	err := raw.Write(func(fd uintptr) bool {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if _, err := unix.Poll(pfd, 0); err != nil {
			return false // EINTR: let the poller wait and look again
		}
		if pfd[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0 {
			sockErr = errReplicaSocket
			if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
				sockErr = fmt.Errorf("%w: %w", errReplicaSocket, syscall.Errno(v))
			}
			return true
		}
		return pfd[0].Revents&unix.POLLOUT != 0
	})
	if err != nil {
		return fmt.Errorf("wait for the replica's socket: %w", err)
	}
	return sockErr
}
