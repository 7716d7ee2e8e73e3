package fanout

import (
	"io"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
)

// CapaZstd is the REPLCONF capa a downstream replproxy sends to ask for a
// zstd-compressed stream. Redis ignores capas it does not know, so plain
// Redis peers never ask and never see compression.
const CapaZstd = "replproxy-zstd"

// zstdMarker ends the PSYNC reply line when compression is on: only a peer
// that asked for it receives this form.
const zstdMarker = " zstd"

// compressedWriter is what a replica's stream goes through after the PSYNC
// reply when compression was negotiated. The bytes decode to exactly the
// stream, so offsets are untouched. The streaming sender flushes at most
// zstdFlushDelay after a byte went in, so blocks carry several sends.
type compressedWriter struct {
	enc  *zstd.Encoder
	wire *countingWriter
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// zstdStreamOptions are the sender's encoder settings, chosen by
// BenchmarkCompressedStream on the compress scenario's mixed stream. Every
// one keeps to standard zstd frames, so any receiver decodes them:
//   - No entropy stage: Huffman-coded literals saved under 0.1 % of the
//     wire on that stream (the literals left after matching are mostly
//     random values) and cost about a quarter of the encoder's CPU. On
//     very repetitive values it costs about a fifth more wire, of a stream
//     that then shrinks to a few percent anyway.
//   - No content checksum: it is written only when a frame ends, which a
//     replica's stream never does, yet it hashes every byte.
//   - A 1 MiB window: the receiver accepts up to 8 MiB; 4 MiB compressed
//     no better and 256 KiB slightly worse, neither cheaper.
func zstdStreamOptions() []zstd.EOption {
	return []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(1 << 20), zstd.WithNoEntropyCompression(true), zstd.WithEncoderCRC(false)}
}

func newCompressedWriter(conn io.Writer, wireBytes *atomic.Int64) (*compressedWriter, error) {
	wire := &countingWriter{w: conn, n: wireBytes}
	enc, err := zstd.NewWriter(wire, zstdStreamOptions()...)
	if err != nil {
		return nil, err
	}
	return &compressedWriter{enc: enc, wire: wire}, nil
}

func (c *compressedWriter) Write(p []byte) (int, error) { return c.enc.Write(p) }

// Flush pushes out what was written since the last flush.
func (c *compressedWriter) Flush() error { return c.enc.Flush() }

func (c *compressedWriter) Close() error { return c.enc.Close() }
