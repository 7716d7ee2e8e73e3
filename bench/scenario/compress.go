package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/internal/mixedload"
)

// mixedLoad pipelines the seeded writes of package mixedload, so two runs
// send the same commands: for d, or until maxCmds were sent if it is not 0.
func mixedLoad(ctx context.Context, addr string, d time.Duration, maxCmds int64) (res loadResult, random int64, err error) {
	gen := mixedload.New(time.Now().Unix())
	cmd := [][]byte{nil}
	const window = 512 // commands in flight: a few hundred KB, well under a second of work
	res, err = pipeline(ctx, addr, window, func(sent loadResult) [][]byte {
		if sent.elapsed >= d || (maxCmds > 0 && sent.cmds >= maxCmds) {
			return nil
		}
		var r int
		cmd[0], r = gen.Append(cmd[0][:0])
		random += int64(r)
		return cmd
	})
	if err != nil && ctx.Err() == nil {
		err = fmt.Errorf("mixed load: %w", err)
	}
	return res, random, err
}

// startProxyOf starts a proxy whose upstream is another proxy, with the
// compression setting given, and waits until it streams.
func (b *bench) startProxyOf(ctx context.Context, name string, upstream *child, maxBytes int64, compression string) (*child, error) {
	cfg := b.proxyConfig(upstream, maxBytes, "everysec")
	cfg = strings.Replace(cfg, "master:\n", "master:\n  compression: "+compression+"\n", 1)
	p, err := b.env.startProxy(ctx, name, cfg)
	if err != nil {
		return nil, err
	}
	return p, waitProxyCaughtUp(ctx, time.Minute, upstream, p)
}

type compressCounters struct {
	wire, stream         int64 // upstream_wire_bytes, upstream_stream_bytes
	sentRaw, sentWire    int64 // compressed_stream_bytes, compressed_wire_bytes
	cpu                  float64
	fullSyncs, partSyncs int64 // upstream syncs: a resync would spoil the byte counts
}

func readCompressCounters(p *child) (compressCounters, error) {
	m, err := p.info("stats")
	if err != nil {
		return compressCounters{}, fmt.Errorf("%s: %w", p.name, err)
	}
	return compressCounters{
		wire: infoInt(m, "upstream_wire_bytes"), stream: infoInt(m, "upstream_stream_bytes"),
		sentRaw: infoInt(m, "compressed_stream_bytes"), sentWire: infoInt(m, "compressed_wire_bytes"),
		cpu: procCPU(p), fullSyncs: infoInt(m, "upstream_full_syncs"), partSyncs: infoInt(m, "upstream_partial_syncs"),
	}, nil
}

func (c compressCounters) minus(o compressCounters) compressCounters {
	return compressCounters{c.wire - o.wire, c.stream - o.stream, c.sentRaw - o.sentRaw, c.sentWire - o.sentWire,
		c.cpu - o.cpu, c.fullSyncs - o.fullSyncs, c.partSyncs - o.partSyncs}
}

func ratio(part, whole int64) float64 {
	if whole <= 0 {
		return 0
	}
	return float64(part) / float64(whole)
}

// compressPass is one run of the compress topology under the mixed load.
type compressPass struct {
	load   loadResult
	random int64
	names  []string
	d      []compressCounters // P1, P2, P2'
}

// p1PerGB is P1's CPU seconds per GB of stream it took in.
func (p compressPass) p1PerGB() float64 { return p.d[0].cpu / gb(p.d[0].stream) }

func (b *bench) compress(ctx context.Context) error {
	o := b.opt
	b.printf("\n== compress: master -> P1 -> P2 and P2' (master.compression: none), both of P1;\n")
	b.printf("   pipelined mixed writes for %s: JSON SETs, HSETs, INCR/INCRBY, 10%% random binary SETs.\n", o.compressTime)
	b.printf("   Three passes of the same seeded commands: P2 with zstd, with s2, then P2 plain; P1's\n")
	b.printf("   CPU per GB of stream in the last, taken from the others, is what each codec costs the sender.\n")
	passes := map[string]compressPass{}
	var cmds int64
	for _, codec := range []string{"zstd", "s2", "none"} {
		p, err := b.compressPass(ctx, codec, cmds)
		if err != nil {
			return err
		}
		b.teardown()
		passes[codec], cmds = p, p.load.cmds
	}
	pp := passes["none"]
	alone, err := codecsAlone(64 << 20)
	if err != nil {
		return err
	}
	for _, codec := range []string{"zstd", "s2"} {
		zp := passes[codec]
		c1 := zp.d[0]
		b.printf("\n   %s: P1 sent %.1f MiB of stream as %.1f MiB on the wire (%.3f, %.1f%% saved)\n", codec,
			mib(c1.sentRaw), mib(c1.sentWire), ratio(c1.sentWire, c1.sentRaw), 100*(1-ratio(c1.sentWire, c1.sentRaw)))
		b.printf("   P1 CPU s per GB of stream (it ingests and serves P2 and P2'): %.2f with P2 %s, %.2f with P2 plain\n",
			zp.p1PerGB(), codec, pp.p1PerGB())
		b.printf("   %s cost on the sender, s per GB of stream: %.2f\n", codec, zp.p1PerGB()-pp.p1PerGB())
		b.printf("   %s cost on the receiver, s per GB of stream (P2 %s against P2' plain, same pass): %.2f\n", codec, codec,
			zp.d[1].cpu/gb(zp.d[1].stream)-zp.d[2].cpu/gb(zp.d[2].stream))
	}
	b.printf("\n   encoders alone, in this process, on %d MiB of the same mixed stream (16 KiB writes, a flush every 64 KiB):\n", 64)
	b.printf("   %-36s %8s %11s\n", "encoder", "s/GB", "wire/strm")
	for _, a := range alone {
		b.printf("   %-36s %8.2f %11.3f\n", a.name, a.cpuPerGB, a.ratio)
	}
	if std, ok := aloneByName(alone, "zstd standard (fastest level)"); ok && std.cpuPerGB > 0 {
		inProxy := passes["zstd"].p1PerGB() - pp.p1PerGB()
		b.printf("   zstd in the proxy / the standard encoder alone: %.2fx CPU, %.2fx wire\n",
			inProxy/std.cpuPerGB, ratio(passes["zstd"].d[0].sentWire, passes["zstd"].d[0].sentRaw)/std.ratio)
	}
	return nil
}

// codecAlone is one encoder's cost and ratio, measured in this process.
type codecAlone struct {
	name            string
	cpuPerGB, ratio float64
}

func aloneByName(list []codecAlone, name string) (codecAlone, bool) {
	for _, a := range list {
		if a.name == name {
			return a, true
		}
	}
	return codecAlone{}, false
}

// codecsAlone encodes n bytes of the mixed stream with a standard Go zstd
// encoder at its fastest level and with the proxy's own encoders, as the
// sender feeds them, and reports each one's CPU (this process's, GC
// included; nothing else runs in it by then) per GB and wire/stream ratio.
func codecsAlone(n int) ([]codecAlone, error) {
	g := mixedload.New(1_700_000_000)
	stream := make([]byte, 0, n+4096)
	for len(stream) < n {
		stream, _ = g.Append(stream)
	}
	type encoder interface {
		Write([]byte) (int, error)
		Flush() error
		Close() error
	}
	makers := []struct {
		name string
		make func(w io.Writer) (encoder, error)
	}{
		{"zstd standard (fastest level)", func(w io.Writer) (encoder, error) {
			return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		}},
		{"zstd, the proxy's settings", func(w io.Writer) (encoder, error) { return fanout.NewStreamEncoder(fanout.CodecZstd, w) }},
		{"s2, the proxy's settings", func(w io.Writer) (encoder, error) { return fanout.NewStreamEncoder(fanout.CodecS2, w) }},
	}
	var out []codecAlone
	for _, mk := range makers {
		var wire countWriter
		enc, err := mk.make(&wire)
		if err != nil {
			return nil, err
		}
		cpu0 := selfCPU()
		for off := 0; off < len(stream); off += 16 << 10 {
			if _, err := enc.Write(stream[off:min(off+16<<10, len(stream))]); err != nil {
				return nil, err
			}
			if (off+16<<10)%(64<<10) == 0 {
				if err := enc.Flush(); err != nil {
					return nil, err
				}
			}
		}
		if err := enc.Flush(); err != nil {
			return nil, err
		}
		cpu := selfCPU() - cpu0
		enc.Close()
		out = append(out, codecAlone{name: mk.name, cpuPerGB: cpu.Seconds() / gb(int64(len(stream))), ratio: ratio(wire.n, int64(len(stream)))})
	}
	return out, nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// compressPass starts master, P1, P2 (with p2Compression) and P2' (none)
// of P1, writes the mixed load, for cmds commands if not 0 and otherwise
// for -compress-time, and reports every proxy's counters over it.
func (b *bench) compressPass(ctx context.Context, p2Compression string, cmds int64) (compressPass, error) {
	o := b.opt
	const maxBytes = 4 << 30 // no retention and so no snapshot refresh within a run
	var res compressPass
	// Names, and so directories, differ by pass: with -keep the first
	// pass's data stays, and must not be the second's starting state.
	pass := "compress-" + p2Compression + "-pass-"
	master, err := b.startMaster(ctx, pass+"master")
	if err != nil {
		return res, err
	}
	p1, err := b.startProxy(ctx, pass+"P1", master, maxBytes, "everysec")
	if err != nil {
		return res, err
	}
	p2, err := b.startProxyOf(ctx, pass+"P2-"+p2Compression, p1, maxBytes, p2Compression)
	if err != nil {
		return res, err
	}
	p2n, err := b.startProxyOf(ctx, pass+"P2prime-none", p1, maxBytes, "none")
	if err != nil {
		return res, err
	}
	procs := []*child{p1, p2, p2n}
	before := make([]compressCounters, len(procs))
	for i, p := range procs {
		if before[i], err = readCompressCounters(p); err != nil {
			return res, err
		}
	}
	d := o.compressTime
	if cmds > 0 {
		d = 10 * o.compressTime // the command count ends it
	}
	res.load, res.random, err = mixedLoad(ctx, master.Addr(), d, cmds)
	if err != nil {
		return res, err
	}
	if err := waitInSync(ctx, o.timeout, master, []*child{p2, p2n}); err != nil {
		return res, err
	}
	res.d = make([]compressCounters, len(procs))
	for i, p := range procs {
		after, err := readCompressCounters(p)
		if err != nil {
			return res, err
		}
		res.d[i] = after.minus(before[i])
		res.names = append(res.names, p.name)
	}
	load := res.load
	b.printf("\n   pass with P2 %s, write: %.0f MiB, %d commands in %.1fs (%.1f MB/s, %.0f commands/s); %.1f%% of the bytes are random values\n",
		p2Compression, mib(load.bytes), load.cmds, load.elapsed.Seconds(), mbps(load.bytes, load.elapsed),
		float64(load.cmds)/load.elapsed.Seconds(), 100*ratio(res.random, load.bytes))
	b.printf("%-42s %11s %11s %10s %8s %8s %8s %8s\n", "proxy", "stream MiB", "wire MiB", "wire/strm", "saved", "CPU s", "s/GB", "resyncs")
	for i, c := range res.d {
		b.printf("%-42s %11.1f %11.1f %10.3f %7.1f%% %8.2f %8.2f %8d\n", res.names[i]+" (upstream)", mib(c.stream), mib(c.wire),
			ratio(c.wire, c.stream), 100*(1-ratio(c.wire, c.stream)), c.cpu, c.cpu/gb(c.stream), c.fullSyncs+c.partSyncs)
	}
	return res, nil
}
