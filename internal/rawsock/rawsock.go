// Package rawsock makes raw system calls on sockets, the only package that
// may (TestNoRawSystemCallOnFiles in backlog). The rule: only on a
// non-blocking socket, never on a file. A raw call hides from the
// scheduler, so one that sleeps in the kernel cannot be handed off, and a
// GC stop-the-world that begins meanwhile waits for its thread with no
// limit: every goroutine (replicas, ACKs, INFO, /readyz) stops until the
// disk answers, which a page-cache write may take (a frozen or stalled
// disk, a full dirty-page cache). On a non-blocking socket it cannot block.
package rawsock

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Of is the socket under c, for reads and writes the poller does not
// drive; nil when c is not a plain socket (TLS, a wrapper).
func Of(c net.Conn) syscall.RawConn {
	if sc, ok := c.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			return raw
		}
	}
	return nil
}

// Read is read(2) on the socket fd, inside a RawConn.Read callback.
func Read(fd uintptr, p []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// WriteNow writes what the socket takes without waiting and returns how
// many bytes that was; an error counts as nothing more written, and the
// socket's owner meets it on its next write.
func WriteNow(raw syscall.RawConn, p []byte) int {
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
