package fanout

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
)

// compressedStream runs the stream loop of an s2 replica on one end of a
// pipe, whose other end (and a decoder on it) the test reads: while the
// test does not read, every write of the sender blocks.
func compressedStream(t *testing.T) (*replica, *backlog.Log, net.Conn, io.Reader) {
	t.Helper()
	srvEnd, peer := net.Pipe()
	return compressedStreamOn(t, CodecS2, srvEnd, peer)
}

// compressedStreamOn is compressedStream with codec on the two ends given.
func compressedStreamOn(t *testing.T, codec string, srvEnd, peer net.Conn) (*replica, *backlog.Log, net.Conn, io.Reader) {
	t.Helper()
	lg, err := backlog.OpenLog(t.TempDir(), 1, backlog.LogOptions{SegmentBytes: 4 << 20, MaxBytes: 1 << 30,
		Fsync: backlog.FsyncNo, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lg.Close() })
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
	done := make(chan error, 1)
	go func() { done <- r.stream(ctx, cur) }()
	t.Cleanup(func() {
		cancel()
		peer.Close()
		srvEnd.Close()
		<-done
		cur.Close()
	})
	dec, err := NewStreamDecoder(codec, peer)
	if err != nil {
		t.Fatal(err)
	}
	return r, lg, peer, dec
}

func readStream(t *testing.T, peer net.Conn, dec io.Reader, want []byte) {
	t.Helper()
	peer.SetReadDeadline(time.Now().Add(30 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(dec, got); err != nil {
		t.Fatalf("the replica did not get the stream: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the replica decoded other bytes than the stream")
	}
}

func waitFedByWriter(t *testing.T, r *replica) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !r.fedByWriter.Load(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the caught-up compressed replica never parked with the writer")
		}
	}
}

// A caught-up compressed replica is fed by the upstream writer, as a plain
// one is: appends that land while its sender is stuck on the socket wait
// in its buffer, in memory, and none of them is read back from the
// backlog files. Before, each append woke the sender, and whatever piled
// up behind a slow write went out from disk.
func TestCompressedReplicaFedByTheWriter(t *testing.T) {
	r, lg, peer, dec := compressedStream(t)
	first := mixedBytes(4 << 10)
	if err := lg.Append(first); err != nil {
		t.Fatal(err)
	}
	readStream(t, peer, dec, first)
	waitFedByWriter(t, r)

	// The test reads nothing now: the sender's first write blocks, and the
	// rest lands behind it.
	stream := mixedBytes(512 << 10)
	for off := 0; off < len(stream); off += 4 << 10 {
		if err := lg.Append(stream[off:min(off+4<<10, len(stream))]); err != nil {
			t.Fatal(err)
		}
	}
	readStream(t, peer, dec, stream)
	if n := r.srv.stats.SentFromDisk.Load(); n != 0 {
		t.Fatalf("%d bytes were read back from the backlog files for a caught-up compressed replica", n)
	}
	total := int64(len(first) + len(stream))
	if n := r.srv.stats.SentFromMemory.Load(); n != total {
		t.Fatalf("%d bytes sent from memory, want all %d", n, total)
	}
	if got := r.sentOff.Load(); got != 1+total {
		t.Fatalf("sent offset %d, want %d", got, 1+total)
	}
	if got := r.srv.stats.CompressedRaw.Load(); got != total {
		t.Fatalf("compressed_stream_bytes %d, want %d", got, total)
	}
}

// More than a buffer's worth behind a blocked write: the push that finds
// the buffer full is short, the replica goes back to its cursor, and the
// stream still arrives whole and in order, the rest read from disk.
func TestCompressedReplicaBufferFullGoesToDisk(t *testing.T) {
	r, lg, peer, dec := compressedStream(t)
	first := mixedBytes(1 << 10)
	if err := lg.Append(first); err != nil {
		t.Fatal(err)
	}
	readStream(t, peer, dec, first)
	waitFedByWriter(t, r)
	stream := mixedBytes(3 * pushMaxBytes)
	for off := 0; off < len(stream); off += 48 << 10 {
		if err := lg.Append(stream[off:min(off+48<<10, len(stream))]); err != nil {
			t.Fatal(err)
		}
	}
	readStream(t, peer, dec, stream)
	if r.srv.stats.SentFromDisk.Load() == 0 {
		t.Fatal("three buffers' worth behind a blocked write all went from memory")
	}
	// Caught up again, it parks with the writer again.
	waitFedByWriter(t, r)
	last := []byte("*1\r\n$4\r\nPING\r\n")
	if err := lg.Append(last); err != nil {
		t.Fatal(err)
	}
	readStream(t, peer, dec, last)
}

// Over TLS too: the writer only copies into the buffer, and the sender
// alone writes to the TLS connection, so a compressed replica on TLS is
// fed by the writer as well, byte for byte.
func TestCompressedReplicaOnTLSFedByTheWriter(t *testing.T) {
	a, b := net.Pipe()
	srvEnd := tls.Server(a, selfSignedTLS(t))
	peer := tls.Client(b, &tls.Config{InsecureSkipVerify: true})
	r, lg, peer2, dec := compressedStreamOn(t, CodecS2, srvEnd, peer)
	first := mixedBytes(2 << 10)
	if err := lg.Append(first); err != nil {
		t.Fatal(err)
	}
	readStream(t, peer2, dec, first)
	waitFedByWriter(t, r)
	stream := mixedBytes(256 << 10)
	for off := 0; off < len(stream); off += 8 << 10 {
		if err := lg.Append(stream[off:min(off+8<<10, len(stream))]); err != nil {
			t.Fatal(err)
		}
	}
	readStream(t, peer2, dec, stream)
	if n := r.srv.stats.SentFromDisk.Load(); n != 0 {
		t.Fatalf("%d bytes were read back from the backlog files for a caught-up compressed TLS replica", n)
	}
}

// Appends of every size, with the replica reading in bursts and stalls, so
// the sender moves between the writer's push, a full buffer and its cursor
// again and again: the replica decodes exactly the log, for each codec.
func TestCompressedReplicaBetweenPushAndDisk(t *testing.T) {
	for _, codec := range AllCodecs() {
		t.Run(codec, func(t *testing.T) {
			srvEnd, peerEnd := net.Pipe()
			r, lg, peer, dec := compressedStreamOn(t, codec, srvEnd, peerEnd)
			stream := mixedBytes(6 << 20)
			got := make(chan []byte, 1)
			go func() {
				buf := make([]byte, len(stream))
				peer.SetReadDeadline(time.Now().Add(2 * time.Minute))
				for n, i := 0, 0; n < len(buf); i++ {
					k, err := dec.Read(buf[n:min(n+(i%7+1)*40<<10, len(buf))])
					n += k
					if err != nil {
						break
					}
					if i%5 == 0 {
						time.Sleep(3 * time.Millisecond) // a stall: the writer's pushes pile up
					}
				}
				got <- buf
			}()
			for off, size := 0, 1; off < len(stream); off, size = off+size, size*7%(300<<10)+1 {
				if err := lg.Append(stream[off:min(off+size, len(stream))]); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(<-got, stream) {
				t.Fatal("the replica decoded other bytes than the log holds")
			}
			t.Logf("from memory %d, from disk %d", r.srv.stats.SentFromMemory.Load(), r.srv.stats.SentFromDisk.Load())
		})
	}
}
