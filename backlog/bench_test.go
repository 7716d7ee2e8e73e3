package backlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Figures from these benchmarks are recorded in bench/README.md. They report
// throughput; none of them fails on speed.

// netReadBytes is what the upstream link reads at most per call (its buffer
// in upstream/stream.go), so one append in production is at most this large.
const netReadBytes = 64 << 10

func benchOptions(policy FsyncPolicy) Options {
	return Options{
		Log: LogOptions{
			SegmentBytes: 64 << 20,
			// Retention never runs: the benchmarks measure the write path,
			// and unlinking segments would add noise unrelated to it.
			MaxBytes: 1 << 50,
			Fsync:    policy,
		},
		Logger: zerolog.Nop(),
	}
}

func openBenchStore(b *testing.B, opt Options) (*Store, string) {
	b.Helper()
	dir := b.TempDir()
	s, err := Open(dir, opt)
	if err != nil {
		b.Fatal(err)
	}
	w, err := s.NewSnapshot()
	if err != nil {
		b.Fatal(err)
	}
	w.Write([]byte("REDIS0010fake"))
	if err := s.Reset(RandomReplID(), 0, w); err != nil {
		b.Fatal(err)
	}
	return s, dir
}

// closeBenchStore also deletes the files at once: the framework calls a
// benchmark several times with growing b.N, and gigabytes from earlier
// rounds would otherwise sit on disk and in the page cache until the end.
func closeBenchStore(b *testing.B, s *Store, dir string) {
	b.Helper()
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	os.RemoveAll(dir)
}

func BenchmarkAppend(b *testing.B) {
	for _, policy := range []FsyncPolicy{FsyncAlways, FsyncEverySec, FsyncNo} {
		b.Run("fsync="+string(policy), func(b *testing.B) {
			benchAppend(b, policy, netReadBytes)
		})
	}
}

// BenchmarkAppendSmall is a quiet master: each network read brings one
// small command, so the per-append overhead (two pwrites, the lock, waking
// the readers) dominates rather than the bytes.
func BenchmarkAppendSmall(b *testing.B) {
	benchAppend(b, FsyncEverySec, 200)
}

func benchAppend(b *testing.B, policy FsyncPolicy, size int) {
	s, dir := openBenchStore(b, benchOptions(policy))
	defer closeBenchStore(b, s, dir)
	chunk := pattern(size, 7)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := s.Append(chunk); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// Append never waits for the disk; the cost of durability shows up as
	// the delay until the offset the proxy may acknowledge upstream has
	// caught up with the last append, which is reported beside the
	// throughput rather than hidden in it.
	end := s.State().End
	start := time.Now()
	for s.State().Durable < end {
		if time.Since(start) > 10*time.Second {
			b.Fatalf("durable offset stuck at %d, end %d", s.State().Durable, end)
		}
		time.Sleep(100 * time.Microsecond)
	}
	b.ReportMetric(float64(time.Since(start).Microseconds())/1000, "ms-to-durable")
	if n := s.SyncStats().Count; n > 0 {
		b.ReportMetric(float64(int64(b.N)*int64(size))/float64(n)/(1<<20), "MiB/fsync")
	}
}

// catchUpBytes is the backlog a lagging replica has to read back.
const catchUpBytes = 256 << 20

// BenchmarkCatchUp sends a filled backlog to a replica over loopback TCP, as
// a replica that was away catches up. The peer only drains the socket, so
// the figure is the proxy's send path with a consumer that costs as little
// as possible on the same cores.
//
// send=cursor is the proxy's path: every record read into memory, checked
// against its CRC-32C, and written from there. The two others are for
// comparison only: send=check+sendfile checks each record from the page
// cache and then sendfiles the same range (what the proxy did before, and
// what it rejected, as a flip between the two would go out unchecked), and
// send=sendfile is the unchecked floor.
func BenchmarkCatchUp(b *testing.B) {
	s, dir := openBenchStore(b, benchOptions(FsyncNo))
	defer closeBenchStore(b, s, dir)
	chunk := pattern(netReadBytes, 3)
	for filled := 0; filled < catchUpBytes; filled += len(chunk) {
		if err := s.Append(chunk); err != nil {
			b.Fatal(err)
		}
	}
	// The sub-benchmarks share one fill: with growing b.N the framework
	// reruns only the inner function, and refilling would dominate.
	for _, send := range []string{"cursor", "check+sendfile", "sendfile"} {
		for _, evict := range []bool{false, true} {
			name := map[bool]string{false: "cache=warm", true: "cache=evicted"}[evict] + "/send=" + send
			b.Run(name, func(b *testing.B) { benchCatchUp(b, s.Log(), evict, send) })
		}
	}
}

func benchCatchUp(b *testing.B, l *Log, evict bool, send string) {
	conn, drained := drainingConn(b)
	defer func() {
		conn.Close()
		<-drained
	}()
	first, end := l.Bounds()
	b.SetBytes(end - first)
	defer reportCPU(b, end-first)()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if evict {
			evictSegments(b, l)
		}
		b.StartTimer()
		if send != "cursor" {
			sendfileSegments(b, l, conn, send == "check+sendfile")
			continue
		}
		c, err := l.NewCursor(first)
		if err != nil {
			b.Fatal(err)
		}
		for {
			// 4 MiB per call, as fanout sends (its chunkBytes default).
			n, err := c.Send(conn, 4<<20)
			if err != nil {
				b.Fatal(err)
			}
			if n == 0 {
				break
			}
		}
		c.Close()
	}
}

// sendfileSegments sends every segment with sendfile, record by record,
// each checked from the page cache first when check is set.
func sendfileSegments(b *testing.B, l *Log, conn *net.TCPConn, check bool) {
	l.mu.RLock()
	segs := append([]*segment(nil), l.segs...)
	l.mu.RUnlock()
	buf := make([]byte, sendBufBytes)
	for _, s := range segs {
		path := segmentPath(l.dir, s.first)
		recs, _, err := readIndex(indexPath(path))
		if err != nil {
			b.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		off := int64(0)
		for _, r := range recs {
			if check {
				if ok, err := checkRecord(f, off, r, buf); err != nil || !ok {
					b.Fatalf("check %s at %d: %v %v", path, off, ok, err)
				}
			}
			if _, err := f.Seek(off, io.SeekStart); err != nil {
				b.Fatal(err)
			}
			if _, err := io.Copy(conn, &io.LimitedReader{R: f, N: int64(r.length)}); err != nil {
				b.Fatal(err)
			}
			off += int64(r.length)
		}
		f.Close()
	}
}

// drainingConn returns the sending end of a loopback TCP connection whose
// other end discards everything, and a channel closed when the drain ends.
func drainingConn(b *testing.B) (*net.TCPConn, <-chan struct{}) {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	out, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	in, ok := <-accepted
	if !ok {
		b.Fatal("accept failed")
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		defer in.Close()
		io.Copy(io.Discard, in)
	}()
	return out.(*net.TCPConn), drained
}

// evictSegments makes the next read come from the disk rather than the
// page cache: POSIX_FADV_DONTNEED drops clean cached pages of a file
// without privileges, unlike writing to /proc/sys/vm/drop_caches. The pages
// are made clean first, as dirty ones are not dropped. On a VM the host may
// still cache the disk, so "evicted" is a lower bound on cold-read cost.
func evictSegments(b *testing.B, l *Log) {
	b.Helper()
	l.mu.RLock()
	paths := make([]string, 0, len(l.segs))
	for _, s := range l.segs {
		paths = append(paths, segmentPath(l.dir, s.first))
	}
	l.mu.RUnlock()
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		err = f.Sync()
		if err == nil {
			err = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
		f.Close()
		if err != nil {
			b.Fatal(fmt.Errorf("evict %s: %w", p, err))
		}
	}
}

// snapshotBenchBytes is the RDB a full sync sends in BenchmarkSnapshotServe.
const snapshotBenchBytes = 256 << 20

// BenchmarkSnapshotServe sends a stored snapshot to a replica over loopback
// TCP, three ways. send=holdback is the proxy's: read through a running
// CRC-64, written from memory, the last 8 bytes held back until the CRC
// matches (SnapshotReader). send=verify+sendfile checks the whole file's
// CRC-64 first and then sendfiles it, which reads it twice and still sends
// whatever the file holds by then. send=verify+holdback is the proxy's
// since a replica with repl-diskless-load exits on a corrupt RDB before
// the trailer: SnapshotReader.Verify, then the held-back send. send=sendfile
// is the unchecked floor.
func BenchmarkSnapshotServe(b *testing.B) {
	s, dir := openBenchStore(b, benchOptions(FsyncNo))
	defer closeBenchStore(b, s, dir)
	s.Append(pattern(100, 1))
	w, err := s.NewSnapshot()
	if err != nil {
		b.Fatal(err)
	}
	chunk := pattern(1<<20, 7)
	for n := 0; n < snapshotBenchBytes; n += len(chunk) {
		w.Write(chunk)
	}
	if err := s.AdoptSnapshot(s.State().ReplID, 50, w); err != nil {
		b.Fatal(err)
	}
	for _, send := range []string{"verify+holdback", "holdback", "verify+sendfile", "sendfile"} {
		for _, evict := range []bool{false, true} {
			name := map[bool]string{false: "cache=warm", true: "cache=evicted"}[evict] + "/send=" + send
			b.Run(name, func(b *testing.B) { benchSnapshotServe(b, s, evict, send) })
		}
	}
}

func benchSnapshotServe(b *testing.B, s *Store, evict bool, send string) {
	conn, drained := drainingConn(b)
	defer func() {
		conn.Close()
		<-drained
	}()
	f, snap, err := s.OpenSnapshot()
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 256<<10)
	b.SetBytes(snap.Size)
	defer reportCPU(b, snap.Size)()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if evict {
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
			unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
		b.StartTimer()
		switch send {
		case "holdback", "verify+holdback":
			rd := s.NewSnapshotReader(f, snap)
			if send == "verify+holdback" {
				if err := rd.Verify(context.Background()); err != nil {
					b.Fatal(err)
				}
			}
			for {
				n, err := rd.Read(buf)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
				if _, err := conn.Write(buf[:n]); err != nil {
					b.Fatal(err)
				}
			}
			continue
		case "verify+sendfile":
			if err := checkSnapshot(filepath.Dir(f.Name()), &snap, true, nil); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := io.Copy(conn, io.NewSectionReader(f, 0, snap.Size)); err != nil {
			b.Fatal(err)
		}
	}
}

// reportCPU reports the process's CPU seconds per GiB sent (both ends of
// the loopback connection, and the page-cache work; eviction included for
// the evicted runs), which a loaded machine distorts less than MB/s.
func reportCPU(b *testing.B, bytesPerOp int64) func() {
	start := cpuTime()
	return func() {
		gib := float64(bytesPerOp) * float64(b.N) / (1 << 30)
		b.ReportMetric((cpuTime()-start).Seconds()/gib, "cpu-s/GiB")
	}
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
