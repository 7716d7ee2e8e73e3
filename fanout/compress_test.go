package fanout

import (
	"context"
	"io"
	"net"
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
