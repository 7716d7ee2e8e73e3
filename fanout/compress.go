package fanout

import (
	"io"
	"net"
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

func newCompressedWriter(conn net.Conn, wireBytes *atomic.Int64) (*compressedWriter, error) {
	wire := &countingWriter{w: conn, n: wireBytes}
	enc, err := zstd.NewWriter(wire, zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<20))
	if err != nil {
		return nil, err
	}
	return &compressedWriter{enc: enc, wire: wire}, nil
}

func (c *compressedWriter) Write(p []byte) (int, error) { return c.enc.Write(p) }

// Flush pushes out what was written since the last flush.
func (c *compressedWriter) Flush() error { return c.enc.Flush() }

func (c *compressedWriter) Close() error { return c.enc.Close() }
