package fanout

import (
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/replproxy/replproxy/internal/mixedload"
)

// mixedBytes is the start, n bytes or a little more, of the stream the
// compress scenario's load makes, from the same generator.
func mixedBytes(n int) []byte {
	g := mixedload.New(1_700_000_000)
	buf := make([]byte, 0, n+4096)
	for len(buf) < n {
		buf, _ = g.Append(buf)
	}
	return buf
}

// countingDiscard stands in for the replica's connection.
type countingDiscard struct{ n int64 }

func (c *countingDiscard) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// streamCodec is one way of putting a stream on the wire: write takes each
// send, flush ends a group of sends.
type streamCodec struct {
	write func(p []byte) error
	flush func() error
}

func zstdCodec(b *testing.B, w io.Writer, opts ...zstd.EOption) streamCodec {
	enc, err := zstd.NewWriter(w, opts...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { enc.Close() })
	return streamCodec{
		write: func(p []byte) error { _, err := enc.Write(p); return err },
		flush: enc.Flush,
	}
}

// encodeAllCodec packs each group of sends into its own frame: no
// streaming copy, but no history across frames either.
func encodeAllCodec(b *testing.B, w io.Writer, opts ...zstd.EOption) streamCodec {
	enc, err := zstd.NewWriter(nil, opts...)
	if err != nil {
		b.Fatal(err)
	}
	var in, out []byte
	return streamCodec{
		write: func(p []byte) error { in = append(in, p...); return nil },
		flush: func() error {
			out = enc.EncodeAll(in, out[:0])
			in = in[:0]
			_, err := w.Write(out)
			return err
		},
	}
}

func s2Codec(w io.Writer, opts ...s2.WriterOption) streamCodec {
	enc := s2.NewWriter(w, append([]s2.WriterOption{s2.WriterConcurrency(1)}, opts...)...)
	return streamCodec{
		write: func(p []byte) error { _, err := enc.Write(p); return err },
		flush: enc.Flush,
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCompressedStream measures what compressing the compress
// scenario's mixed stream, and a stream of JSON-like values (the WAN
// scenario's), costs the sender, in CPU seconds (user+system, GC
// included) per GB of stream, and the wire/stream ratio. The stream goes in
// as sends of sendBytes; a flush ends every flushBytes of them, as the
// sender's flush timer would at the scenario's rate (about 64 KiB per 5 ms).
func BenchmarkCompressedStream(b *testing.B) {
	const sendBytes = 16 << 10
	// base is the sender's settings before no-entropy and no-checksum;
	// the other cases vary one thing from it.
	base := []zstd.EOption{zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1 << 20)}
	with := func(extra ...zstd.EOption) []zstd.EOption { return append(append([]zstd.EOption{}, base...), extra...) }
	cases := []struct {
		name       string
		flushBytes int
		codec      func(b *testing.B, w io.Writer) streamCodec
	}{
		// standard is a Go zstd encoder as anyone would start one, at the
		// fastest level: the yardstick for the sender's ratio and CPU.
		{"zstd/standard/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		}},
		{"s2/shipped/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec { return s2Codec(w, s2StreamOptions()...) }},
		{"s2/shipped/flush=send", sendBytes, func(b *testing.B, w io.Writer) streamCodec { return s2Codec(w, s2StreamOptions()...) }},
		{"zstd/shipped/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec { return zstdCodec(b, w, zstdStreamOptions()...) }},
		{"zstd/shipped/flush=send", sendBytes, func(b *testing.B, w io.Writer) streamCodec { return zstdCodec(b, w, zstdStreamOptions()...) }},
		{"zstd/before/flush=send", sendBytes, func(b *testing.B, w io.Writer) streamCodec { return zstdCodec(b, w, base...) }},
		{"zstd/before/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec { return zstdCodec(b, w, base...) }},
		{"zstd/before/flush=256K", 256 << 10, func(b *testing.B, w io.Writer) streamCodec { return zstdCodec(b, w, base...) }},
		{"zstd/before/flush=1M", 1 << 20, func(b *testing.B, w io.Writer) streamCodec { return zstdCodec(b, w, base...) }},
		{"zstd/noentropy/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, with(zstd.WithNoEntropyCompression(true))...)
		}},
		{"zstd/noentropy/flush=256K", 256 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, with(zstd.WithNoEntropyCompression(true))...)
		}},
		{"zstd/noentropy+nocrc/flush=32K", 32 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, with(zstd.WithNoEntropyCompression(true), zstd.WithEncoderCRC(false))...)
		}},
		{"zstd/noentropy+nocrc/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, with(zstd.WithNoEntropyCompression(true), zstd.WithEncoderCRC(false))...)
		}},
		{"zstd/noentropy+nocrc/flush=128K", 128 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, with(zstd.WithNoEntropyCompression(true), zstd.WithEncoderCRC(false))...)
		}},
		{"zstd/nocrc/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, with(zstd.WithEncoderCRC(false))...)
		}},
		{"zstd/lowmem/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, with(zstd.WithLowerEncoderMem(true))...)
		}},
		{"zstd/allLitEntropyOff/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, with(zstd.WithAllLitEntropyCompression(false))...)
		}},
		{"zstd/window=256K/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, with(zstd.WithWindowSize(256<<10))...)
		}},
		{"zstd/window=4M/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, with(zstd.WithWindowSize(4<<20))...)
		}},
		{"zstd/default-level/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec {
			return zstdCodec(b, w, with(zstd.WithEncoderLevel(zstd.SpeedDefault))...)
		}},
		{"zstd/encodeall/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec { return encodeAllCodec(b, w, base...) }},
		{"zstd/encodeall/flush=256K", 256 << 10, func(b *testing.B, w io.Writer) streamCodec { return encodeAllCodec(b, w, base...) }},
		{"s2/flush=256K", 256 << 10, func(b *testing.B, w io.Writer) streamCodec { return s2Codec(w) }},
		{"s2/better/flush=64K", 64 << 10, func(b *testing.B, w io.Writer) streamCodec { return s2Codec(w, s2.WriterBetterCompression()) }},
	}
	streams := []struct {
		name  string
		bytes []byte
	}{{"mixed", mixedBytes(16 << 20)}, {"json", jsonBytes(16 << 20)}}
	for _, st := range streams {
		for _, tc := range cases {
			benchCodec(b, st.name+"/"+tc.name, st.bytes, sendBytes, tc.flushBytes, tc.codec)
		}
	}
}

func benchCodec(b *testing.B, name string, stream []byte, sendBytes, flushBytes int, codec func(b *testing.B, w io.Writer) streamCodec) {
	tc := struct {
		flushBytes int
		codec      func(b *testing.B, w io.Writer) streamCodec
	}{flushBytes, codec}
	{
		b.Run(name, func(b *testing.B) {
			wire := &countingDiscard{}
			c := tc.codec(b, wire)
			b.SetBytes(int64(len(stream)))
			b.ReportAllocs()
			cpu0 := cpuTime()
			b.ResetTimer()
			for b.Loop() {
				pending := 0
				for off := 0; off < len(stream); off += sendBytes {
					p := stream[off:min(off+sendBytes, len(stream))]
					if err := c.write(p); err != nil {
						b.Fatal(err)
					}
					if pending += len(p); pending >= tc.flushBytes {
						if err := c.flush(); err != nil {
							b.Fatal(err)
						}
						pending = 0
					}
				}
				if err := c.flush(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			total := float64(b.N) * float64(len(stream))
			b.ReportMetric((cpuTime()-cpu0).Seconds()/(total/1e9), "cpu-s/GB")
			b.ReportMetric(float64(wire.n)/total, "wire/stream")
		})
	}
}
