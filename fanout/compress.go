package fanout

import (
	"fmt"
	"io"
	"slices"
	"sync/atomic"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// The codecs a stream between two replproxies may travel in. A downstream
// replproxy asks with one REPLCONF capa per codec it accepts, best first;
// Redis ignores capas it does not know, so plain Redis peers never ask and
// never see compression. The upstream answers with the codec's name at
// the end of the PSYNC reply line, a form only a peer that asked receives.
const (
	CodecS2   = "s2"
	CodecZstd = "zstd"
)

// AllCodecs are the codecs this build speaks, fastest first: what a
// downstream set to "auto" asks for, and what a Server offers by default.
func AllCodecs() []string { return []string{CodecS2, CodecZstd} }

// CapaZstd and CapaS2 are the REPLCONF capas that ask for each codec. A
// replproxy from before s2 knows only CapaZstd and ignores CapaS2, so a
// mixed pair settles on zstd.
const (
	CapaZstd = "replproxy-zstd"
	CapaS2   = "replproxy-s2"
)

// Capa is the REPLCONF capa that asks for codec.
func Capa(codec string) string { return "replproxy-" + codec }

// codecOfCapa is the codec a capa asks for, or "".
func codecOfCapa(capa string) string {
	switch capa {
	case CapaS2:
		return CodecS2
	case CapaZstd:
		return CodecZstd
	}
	return ""
}

// KnownCodec says whether this build speaks codec.
func KnownCodec(codec string) bool { return slices.Contains(AllCodecs(), codec) }

// pickCodec is the first codec of asked, the downstream's order, that
// offered holds: the receiver knows what its link costs. "" means none.
func pickCodec(asked, offered []string) string {
	for _, c := range asked {
		if slices.Contains(offered, c) {
			return c
		}
	}
	return ""
}

// codec is what a replica of this client gets: the best codec it asked
// for that the server offers. A plain SYNC has no PSYNC reply line to
// carry the codec's name, so it is never compressed.
func (c *client) codec(prePsync bool) string {
	if prePsync {
		return ""
	}
	offered := c.srv.cfg.Codecs
	if offered == nil {
		offered = AllCodecs()
	}
	return pickCodec(c.codecs, offered)
}

// StreamEncoder is a codec's writer: what goes in decodes to exactly the
// stream, so offsets are untouched.
type StreamEncoder interface {
	io.Writer
	Flush() error
	Close() error
}

// compressedWriter is what a replica's stream goes through after the PSYNC
// reply when compression was negotiated. The streaming sender flushes at
// most zstdFlushDelay after a byte went in, so blocks carry several sends.
type compressedWriter struct {
	enc  StreamEncoder
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
// BenchmarkCompressedStream. Every one keeps to standard zstd frames, so
// any receiver decodes them:
//   - The entropy stage stays on: without it, JSON-like values took 0.52
//     of the stream on the wire against 0.36 with it, barely denser than
//     s2 at three times its CPU. A link that picks zstd pays in CPU to
//     save bytes, so zstd must save them.
//   - No content checksum: it is written only when a frame ends, which a
//     replica's stream never does, yet it hashes every byte.
//   - A 1 MiB window: the receiver accepts up to 8 MiB; 4 MiB compressed
//     no better and 256 KiB slightly worse, neither cheaper.
func zstdStreamOptions() []zstd.EOption {
	return []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(1 << 20), zstd.WithEncoderCRC(false)}
}

// s2StreamOptions are the sender's s2 settings: one block is compressed
// at a time on the sender's goroutine (the proxy serves many replicas, so
// parallel blocks would only add goroutines), up to 1 MiB when the link
// lags and the writes pile up, well under the receiver's 4 MiB limit.
func s2StreamOptions() []s2.WriterOption {
	return []s2.WriterOption{s2.WriterConcurrency(1), s2.WriterBlockSize(1 << 20)}
}

func newCompressedWriter(codec string, conn io.Writer, wireBytes *atomic.Int64) (*compressedWriter, error) {
	wire := &countingWriter{w: conn, n: wireBytes}
	enc, err := NewStreamEncoder(codec, wire)
	if err != nil {
		return nil, err
	}
	return &compressedWriter{enc: enc, wire: wire}, nil
}

// NewStreamEncoder is the sender's encoder for codec, writing to w: what
// the compress scenario measures alone.
func NewStreamEncoder(codec string, w io.Writer) (StreamEncoder, error) {
	switch codec {
	case CodecZstd:
		enc, err := zstd.NewWriter(w, zstdStreamOptions()...)
		if err != nil {
			return nil, fmt.Errorf("start zstd stream: %w", err)
		}
		return enc, nil
	case CodecS2:
		return s2.NewWriter(w, s2StreamOptions()...), nil
	}
	return nil, fmt.Errorf("unknown codec %q", codec)
}

func (c *compressedWriter) Write(p []byte) (int, error) { return c.enc.Write(p) }

// Flush pushes out what was written since the last flush.
func (c *compressedWriter) Flush() error { return c.enc.Flush() }

func (c *compressedWriter) Close() error { return c.enc.Close() }

// NewStreamDecoder reads a stream compressed with codec. Its limits keep a
// hostile peer from making the receiver allocate much: an 8 MiB zstd
// window, 4 MiB s2 blocks.
func NewStreamDecoder(codec string, r io.Reader) (io.Reader, error) {
	switch codec {
	case CodecZstd:
		dec, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(8<<20))
		if err != nil {
			return nil, fmt.Errorf("start zstd stream: %w", err)
		}
		return dec, nil
	case CodecS2:
		return s2.NewReader(r, s2.ReaderMaxBlockSize(4<<20)), nil
	}
	return nil, fmt.Errorf("unknown codec %q", codec)
}
