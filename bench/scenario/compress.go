package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/replproxy/replproxy/internal/mixedload"
)

// mixedLoad pipelines the seeded writes of package mixedload, so two runs
// send the same commands: for d, or until maxCmds were sent if it is not 0.
func mixedLoad(ctx context.Context, addr string, d time.Duration, maxCmds int64) (res loadResult, random int64, err error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return loadResult{}, 0, err
	}
	defer conn.Close()
	stopWatch := context.AfterFunc(ctx, func() { conn.Close() })
	defer stopWatch()

	const window = 512 // commands in flight: a few hundred KB, well under a second of work
	inflight := make(chan struct{}, window)
	readDone := make(chan error, 1)
	go func() {
		br := bufio.NewReaderSize(conn, 64<<10)
		for range inflight {
			if _, err := readReply(br); err != nil {
				readDone <- err
				conn.Close()
				for range inflight {
				}
				return
			}
		}
		readDone <- nil
	}()

	var cmd []byte
	bw := bufio.NewWriterSize(conn, 256<<10)
	start := time.Now()
	gen := mixedload.New(start.Unix())
	var werr error
	for ctx.Err() == nil && time.Since(start) < d && (maxCmds == 0 || res.cmds < maxCmds) {
		select {
		case inflight <- struct{}{}:
		default:
			if werr = bw.Flush(); werr != nil {
				break
			}
			inflight <- struct{}{}
		}
		if werr != nil {
			break
		}
		var r int
		cmd, r = gen.Append(cmd[:0])
		random += int64(r)
		if _, werr = bw.Write(cmd); werr != nil {
			break
		}
		res.bytes += int64(len(cmd))
		res.cmds++
	}
	if werr == nil {
		werr = bw.Flush()
	}
	close(inflight)
	rerr := <-readDone
	res.elapsed = time.Since(start)
	if ctx.Err() != nil {
		return res, random, ctx.Err()
	}
	if werr != nil {
		return res, random, fmt.Errorf("mixed load: %w", werr)
	}
	if rerr != nil {
		return res, random, fmt.Errorf("mixed load: %w", rerr)
	}
	return res, random, nil
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
	err = waitFor(ctx, time.Minute, name+" to sync from "+upstream.name, func() (bool, string, error) {
		done, lag, err := proxyCaughtUp(upstream, p)
		return done, fmt.Sprintf("%d bytes behind", lag), err
	})
	return p, err
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
	b.printf("   Two passes of the same seeded commands: P2 with zstd, then P2 plain; P1's CPU\n")
	b.printf("   per GB of stream in the second, taken from the first, is what zstd costs the sender.\n")
	zp, err := b.compressPass(ctx, "zstd", 0)
	if err != nil {
		return err
	}
	b.teardown()
	pp, err := b.compressPass(ctx, "none", zp.load.cmds)
	if err != nil {
		return err
	}
	c1 := zp.d[0]
	b.printf("\n   P1 sent compressed: %.1f MiB of stream as %.1f MiB on the wire (%.3f, %.1f%% saved)\n",
		mib(c1.sentRaw), mib(c1.sentWire), ratio(c1.sentWire, c1.sentRaw), 100*(1-ratio(c1.sentWire, c1.sentRaw)))
	b.printf("   P1 CPU s per GB of stream (it ingests and serves P2 and P2'): %.2f with P2 zstd, %.2f with P2 plain\n",
		zp.p1PerGB(), pp.p1PerGB())
	b.printf("   zstd cost on the sender, s per GB of stream: %.2f\n", zp.p1PerGB()-pp.p1PerGB())
	b.printf("   zstd cost on the receiver, s per GB of stream (P2 zstd against P2' plain, same pass): %.2f\n",
		zp.d[1].cpu/gb(zp.d[1].stream)-zp.d[2].cpu/gb(zp.d[2].stream))
	return nil
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
	res.load, res.random, err = mixedLoad(ctx, master.addr(), d, cmds)
	if err != nil {
		return res, err
	}
	for _, p := range []*child{p2, p2n} {
		err := waitFor(ctx, o.timeout, p.name+" to hold the whole write", func() (bool, string, error) {
			done, lag, err := proxyCaughtUp(master, p)
			return done, fmt.Sprintf("%d bytes behind the master", lag), err
		})
		if err != nil {
			return res, err
		}
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
