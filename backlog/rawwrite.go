package backlog

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Page-cache writes on the hot path are raw system calls, which the Go
// scheduler does not see. A normal system call wakes the runtime's monitor
// thread whenever the process was idle, and the monitor then polls every
// 20 µs until the process is idle again; a relay that goes idle between
// upstream reads paid that wakeup and those polls for every read, about a
// tenth of its CPU (bench/README.md). A raw call cannot be handed off if it
// blocks, so it is used only while the page cache takes writes quickly and
// another P can run everything else: after one slow write (a disk that
// stalls, not a busy CPU) the log goes back to normal calls for rawBackoff.
const (
	rawSlowWrite = 50 * time.Millisecond
	rawBackoff   = 10 * time.Second
)

// fileWriter writes one file of the active segment.
type fileWriter struct {
	f   *os.File
	raw syscall.RawConn // nil: normal writes only
}

func newFileWriter(f *os.File) fileWriter {
	raw, err := f.SyscallConn()
	if err != nil || unsafe.Sizeof(uintptr(0)) < 8 {
		raw = nil // pwrite64's offset is one register only on 64-bit systems
	}
	return fileWriter{f: f, raw: raw}
}

// rawWrites decides, per write, whether the next write may be raw. Only the
// writer uses it.
type rawWrites struct {
	slowUntil time.Time
	slowAfter time.Duration // 0: rawSlowWrite (tests set less)
	raw, slow int64         // raw writes, and those that were slow
	log       func(took time.Duration)
	// procsOK caches GOMAXPROCS >= 2, looked at once a second (procsAt):
	// reading GOMAXPROCS takes the scheduler's global lock.
	procsOK bool
	procsAt time.Time
}

// allowed says whether a write starting at now may be raw.
func (rw *rawWrites) allowed(now time.Time) bool {
	if now.Sub(rw.procsAt) > time.Second {
		rw.procsOK, rw.procsAt = runtime.GOMAXPROCS(0) >= 2, now
	}
	return rw.procsOK && !now.Before(rw.slowUntil)
}

// writeAt writes all of p at off, raw while that is safe.
func (w *fileWriter) writeAt(rw *rawWrites, p []byte, off int64) (int, error) {
	start := time.Now()
	if w.raw == nil || !rw.allowed(start) {
		return w.f.WriteAt(p, off)
	}
	n, err := w.rawWriteAt(p, off)
	rw.raw++
	slowAfter := rw.slowAfter
	if slowAfter == 0 {
		slowAfter = rawSlowWrite
	}
	if took := time.Since(start); took > slowAfter {
		rw.slowUntil = time.Now().Add(rawBackoff)
		rw.slow++
		if rw.log != nil {
			rw.log(took)
		}
	}
	return n, err
}

// rawWriteAt is pwrite(2) as a raw call. RawConn.Write holds the file open
// for the call, so a concurrent Close cannot hand the descriptor to another
// file under it.
func (w *fileWriter) rawWriteAt(p []byte, off int64) (int, error) {
	n := 0
	var werr error
	err := w.raw.Write(func(fd uintptr) bool {
		for n < len(p) {
			k, _, errno := unix.RawSyscall6(unix.SYS_PWRITE64, fd, uintptr(unsafe.Pointer(&p[n])),
				uintptr(len(p)-n), uintptr(off+int64(n)), 0, 0)
			if errno == unix.EINTR {
				continue
			}
			if errno != 0 {
				werr = errno
				break
			}
			if k == 0 {
				werr = fmt.Errorf("pwrite wrote nothing")
				break
			}
			n += int(k)
		}
		return true
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return n, &os.PathError{Op: "write", Path: w.f.Name(), Err: err}
	}
	return n, nil
}
