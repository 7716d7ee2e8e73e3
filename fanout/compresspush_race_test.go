package fanout

import (
	"context"
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
)

// parkedStream is a compressed replica's stream loop on a pipe, with what a
// test needs to end it and look at it from outside.
type parkedStream struct {
	r      *replica
	lg     *backlog.Log
	peer   net.Conn
	dec    io.Reader
	cancel context.CancelFunc
	done   chan struct{} // closed when the loop has ended, with err
	err    error
}

// startParkedStream starts codec's stream loop on lg from offset 1.
func startParkedStream(t *testing.T, codec string, lg *backlog.Log) *parkedStream {
	t.Helper()
	srvEnd, peer := net.Pipe()
	cur, err := lg.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	s := newTestServer(Config{Logger: zerolog.Nop(), ReplTimeout: 30 * time.Second, chunkBytes: 64 << 10})
	r := &replica{srv: s, conn: srvEnd, out: srvEnd, log: zerolog.Nop(), codec: codec}
	if err := r.beginStream(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ps := &parkedStream{r: r, lg: lg, peer: peer, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(ps.done)
		ps.err = r.stream(ctx, cur)
		cur.Close()
		srvEnd.Close()
		r.cw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		peer.Close()
		srvEnd.Close()
		select {
		case <-ps.done:
		case <-time.After(30 * time.Second):
			t.Error("the stream loop did not end")
		}
	})
	ps.dec, err = NewStreamDecoder(codec, peer)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// appendIn appends p in pieces of size bytes.
func appendIn(t *testing.T, lg *backlog.Log, p []byte, size int) {
	t.Helper()
	for off := 0; off < len(p); off += size {
		if err := lg.Append(p[off:min(off+size, len(p))]); err != nil {
			t.Fatal(err)
		}
	}
}

// failingSyncLog is a log whose fsyncs fail while fail is set: a SyncNow
// then cuts it back to its durable end, as on a sick disk.
func failingSyncLog(t *testing.T, fail *atomic.Bool) *backlog.Log {
	t.Helper()
	lg, err := backlog.OpenLog(t.TempDir(), 1, backlog.LogOptions{SegmentBytes: 4 << 20, MaxBytes: 1 << 30,
		Fsync: backlog.FsyncEverySec, Logger: zerolog.Nop(),
		Sync: func(f *os.File) error {
			if fail.Load() {
				return &os.PathError{Op: "fsync", Path: f.Name(), Err: io.ErrUnexpectedEOF}
			}
			return f.Sync()
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.Close() })
	return lg
}

// A compressed replica parked with the writer, its sender stuck on the
// socket with the writer's pushes piling up in its buffer, when a failed
// fsync cuts the log back below them: the bytes pushed before the cut are
// the ones the master sends again, so the replica decodes each byte once,
// in order, and the stream goes on at the right offset. Nothing it may
// acknowledge is past what went into its stream.
func TestCompressedReplicaParkedAcrossACut(t *testing.T) {
	for _, codec := range AllCodecs() {
		t.Run(codec, func(t *testing.T) {
			var fail atomic.Bool
			lg := failingSyncLog(t, &fail)
			ps := startParkedStream(t, codec, lg)
			first := mixedBytes(4 << 10)
			appendIn(t, lg, first, len(first))
			lg.SyncNow()
			readStream(t, ps.peer, ps.dec, first)
			waitFedByWriter(t, ps.r)

			// Not read yet: pushed into the buffer behind a blocked write.
			cutAway := mixedBytes(200 << 10)
			appendIn(t, lg, cutAway, 4<<10)
			fail.Store(true)
			lg.SyncNow() // fails: the log is cut back to the end of first
			if _, end := lg.Bounds(); end != 1+int64(len(first)) {
				t.Fatalf("log end %d after the cut, want %d", end, 1+len(first))
			}
			if got, sent := ps.r.maxAck.Load(), 1+int64(len(first)+len(cutAway))-1; got > sent {
				t.Fatalf("maxAck %d is past the %d pushed", got, sent)
			}
			fail.Store(false)
			lg.Resume()
			// The master sends the cut bytes again, then more.
			more := mixedBytes(300 << 10)[100<<10:]
			appendIn(t, lg, cutAway, 16<<10)
			appendIn(t, lg, more, 4<<10)
			want := append(append([]byte(nil), cutAway...), more...)
			readStream(t, ps.peer, ps.dec, want)

			end := 1 + int64(len(first)+len(want))
			waitFedByWriter(t, ps.r)
			if got := ps.r.sentOff.Load(); got != end {
				t.Fatalf("sent offset %d, want %d", got, end)
			}
			if got := ps.r.maxAck.Load(); got != end-1 {
				t.Fatalf("maxAck %d with everything up to %d sent", got, end-1)
			}
			// Still fed at the right place after the cut.
			last := []byte("*1\r\n$4\r\nPING\r\n")
			appendIn(t, lg, last, len(last))
			readStream(t, ps.peer, ps.dec, last)
		})
	}
}

// Store.Reset closes the old history's log while a compressed replica is
// parked with bytes in its buffer: the sender ends, saying the history was
// reset, instead of staying parked on a log nobody appends to.
func TestCompressedReplicaParkedWhenTheLogCloses(t *testing.T) {
	var fail atomic.Bool
	lg := failingSyncLog(t, &fail)
	ps := startParkedStream(t, CodecZstd, lg)
	first := mixedBytes(2 << 10)
	appendIn(t, lg, first, len(first))
	readStream(t, ps.peer, ps.dec, first)
	waitFedByWriter(t, ps.r)
	appendIn(t, lg, mixedBytes(64<<10), 4<<10)
	lg.Close()
	go io.Copy(io.Discard, ps.peer) // lets the stuck write go
	select {
	case <-ps.done:
		if ps.err == nil {
			t.Fatal("the stream loop ended with no error on a closed log")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a compressed replica parked with the writer stayed on after the log closed")
	}
}

// 100 compressed replicas, one after another, parked with the writer and
// then dropped (DropAll's cancel, or the replica hanging up) while their
// sender is stuck with pushes in its buffer: each stream loop ends, and
// no goroutine is left behind.
func TestCompressedReplicaDropWhileParkedLeavesNoGoroutine(t *testing.T) {
	lg, err := backlog.OpenLog(t.TempDir(), 1, backlog.LogOptions{SegmentBytes: 4 << 20, MaxBytes: 1 << 30,
		Fsync: backlog.FsyncNo, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	runtime.GC()
	before := runtime.NumGoroutine()
	chunk := mixedBytes(8 << 10)
	for i := range 100 {
		codec := AllCodecs()[i%len(AllCodecs())]
		srvEnd, peer := net.Pipe()
		_, end := lg.Bounds()
		cur, err := lg.NewCursor(end)
		if err != nil {
			t.Fatal(err)
		}
		s := newTestServer(Config{Logger: zerolog.Nop(), ReplTimeout: 30 * time.Second, chunkBytes: 64 << 10})
		r := &replica{srv: s, conn: srvEnd, out: srvEnd, log: zerolog.Nop(), codec: codec}
		if err := r.beginStream(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			err := r.stream(ctx, cur)
			cur.Close()
			r.cw.Close()
			done <- err
		}()
		waitFedByWriter(t, r)
		for range i%5 + 1 {
			if err := lg.Append(chunk); err != nil {
				t.Fatal(err)
			}
		}
		if i%2 == 0 {
			cancel() // dropped by the server; its conn closes after
			srvEnd.Close()
		} else {
			peer.Close() // the replica hangs up mid-push
		}
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: the stream loop of a dropped parked replica did not end", i)
		}
		cancel()
		srvEnd.Close()
		peer.Close()
		if got, pushed := r.maxAck.Load(), func() int64 { _, e := lg.Bounds(); return e - 1 }(); got > pushed {
			t.Fatalf("round %d: maxAck %d past the log's last byte %d", i, got, pushed)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after 100 parked replicas were dropped, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
