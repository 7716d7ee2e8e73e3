package fanout

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
)

// A compressed stream that goes quiet still delivers every byte: what
// waits in the encoder for more to share its block is flushed by the timer
// while the sender waits for the next append, and each append arrives
// whole at the replica without another one behind it.
func TestCompressedStreamFlushesWhenIdle(t *testing.T) {
	lg, err := backlog.OpenLog(t.TempDir(), 1, backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30,
		Fsync: backlog.FsyncNo, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	cur, err := lg.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	s := New(Config{Logger: zerolog.Nop(), ReplTimeout: 10 * time.Second, ChunkBytes: 64 << 10})
	srvEnd, peer := net.Pipe()
	defer peer.Close()
	r := &replica{srv: s, conn: srvEnd, out: srvEnd, log: zerolog.Nop(), zstd: true}
	if err := r.beginStream(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.stream(ctx, cur) }()
	dec, err := zstd.NewReader(peer, zstd.WithDecoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()

	for i, msg := range []string{"*1\r\n$4\r\nPING\r\n", "*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n", "+x\r\n"} {
		if err := lg.Append([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		peer.SetReadDeadline(time.Now().Add(10 * time.Second))
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(dec, got); err != nil {
			t.Fatalf("append %d: the replica did not get the bytes of an idle stream: %v", i, err)
		}
		if string(got) != msg {
			t.Fatalf("append %d: got %q, want %q", i, got, msg)
		}
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("stream returned nil after its context ended")
	}
}

// The sender's stream stays standard zstd that the receiver, with its 8 MiB
// window limit, decodes to the very bytes, sent by sends and flushes as the
// stream loop makes them. Its frame carries no content checksum (written
// only at a frame's end, which a replica's stream never reaches) and asks
// for a window well inside the receiver's limit.
func TestCompressedStreamIsPlainZstd(t *testing.T) {
	stream := mixedBytes(2 << 20)
	var wire bytes.Buffer
	var wireBytes atomic.Int64
	cw, err := newCompressedWriter(&wire, &wireBytes)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(stream); off += 16 << 10 {
		if _, err := cw.Write(stream[off:min(off+16<<10, len(stream))]); err != nil {
			t.Fatal(err)
		}
		if off%(64<<10) == 0 {
			if err := cw.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := cw.Flush(); err != nil {
		t.Fatal(err)
	}
	if int64(wire.Len()) != wireBytes.Load() {
		t.Fatalf("wire counter %d, %d bytes written", wireBytes.Load(), wire.Len())
	}
	var h zstd.Header
	if err := h.Decode(wire.Bytes()); err != nil {
		t.Fatal(err)
	}
	if h.HasCheckSum || h.WindowSize == 0 || h.WindowSize > 1<<20 {
		t.Fatalf("frame header: checksum %t, window %d bytes", h.HasCheckSum, h.WindowSize)
	}
	dec, err := zstd.NewReader(&wire, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(8<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	got := make([]byte, len(stream))
	if _, err := io.ReadFull(dec, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, stream) {
		t.Fatal("the decoded stream differs from what was sent")
	}
	if ratio := float64(wireBytes.Load()) / float64(len(stream)); ratio > 0.45 {
		t.Fatalf("wire/stream %.3f: the mixed stream should compress to about 0.41", ratio)
	}
}
