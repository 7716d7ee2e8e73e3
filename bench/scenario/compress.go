package main

import (
	"bufio"
	"context"
	"fmt"
	"math/rand"
	"net"
	"strconv"
	"strings"
	"time"
)

// mixedLoad pipelines a mix of writes shaped like an application's rather
// than the big repeated values of runLoad, which zstd would shrink to
// nothing and so flatter the compression figures:
//
//	50% SET user:<id> of a JSON record whose fields vary
//	20% HSET session:<id> with five fields
//	20% INCR / INCRBY on counters
//	10% SET blob:<id> of 64..1024 random bytes, which do not compress
//
// The random source is seeded, so two runs send the same commands.
func mixedLoad(ctx context.Context, addr string, d time.Duration) (res loadResult, random int64, err error) {
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

	rng := rand.New(rand.NewSource(7))
	first := []string{"Ana", "Bruno", "Chen", "Dara", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kemal", "Lea", "Mateo", "Nia", "Omar", "Priya"}
	last := []string{"Silva", "Novak", "Okafor", "Tanaka", "Müller", "Haddad", "Kowalski", "Rossi", "Larsen", "Nguyen", "García", "Ivanova"}
	cities := []string{"Lisbon", "Osaka", "Lagos", "Berlin", "Austin", "Krakow", "Lyon", "Pune", "Quito", "Tallinn"}
	tags := []string{"beta", "vip", "churn-risk", "newsletter", "mobile", "desktop", "trial", "annual", "eu", "us"}
	agents := []string{
		"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
		"Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
		"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
		"okhttp/4.12.0",
	}
	pages := []string{"/", "/cart", "/checkout", "/search", "/account", "/orders", "/help", "/product"}
	blob := make([]byte, 1024)

	var cmd []byte
	var sb strings.Builder
	bw := bufio.NewWriterSize(conn, 256<<10)
	start := time.Now()
	now := start.Unix()
	var werr error
	for i := 0; ctx.Err() == nil && time.Since(start) < d; i++ {
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
		ts := strconv.FormatInt(now+int64(i/1000), 10)
		switch p := rng.Intn(10); {
		case p < 5:
			id := rng.Intn(100000)
			sb.Reset()
			fmt.Fprintf(&sb, `{"id":%d,"name":"%s %s","email":"%s.%s%d@example.com","age":%d,"city":"%s","score":%.3f,"active":%t,"created":%s,"tags":[`,
				id, first[rng.Intn(len(first))], last[rng.Intn(len(last))], strings.ToLower(first[rng.Intn(len(first))]),
				strings.ToLower(last[rng.Intn(len(last))]), rng.Intn(100), 18+rng.Intn(60), cities[rng.Intn(len(cities))],
				rng.Float64()*1000, rng.Intn(4) > 0, ts)
			for t := rng.Intn(4); t >= 0; t-- {
				fmt.Fprintf(&sb, `"%s"`, tags[rng.Intn(len(tags))])
				if t > 0 {
					sb.WriteByte(',')
				}
			}
			fmt.Fprintf(&sb, `],"visits":%d,"balance":"%d.%02d"}`, rng.Intn(5000), rng.Intn(100000), rng.Intn(100))
			cmd = appendCommand(cmd[:0], "SET", "user:"+strconv.Itoa(id), sb.String())
		case p < 7:
			cmd = appendCommand(cmd[:0], "HSET", "session:"+strconv.FormatInt(rng.Int63n(1<<40), 36),
				"user", strconv.Itoa(rng.Intn(100000)),
				"ip", fmt.Sprintf("10.%d.%d.%d", rng.Intn(256), rng.Intn(256), rng.Intn(256)),
				"ua", agents[rng.Intn(len(agents))],
				"last_seen", ts,
				"page", pages[rng.Intn(len(pages))]+"?ref="+strconv.Itoa(rng.Intn(1000)))
		case p < 9:
			key := "counter:" + pages[rng.Intn(len(pages))] + ":" + strconv.Itoa(rng.Intn(500))
			if rng.Intn(2) == 0 {
				cmd = appendCommand(cmd[:0], "INCR", key)
			} else {
				cmd = appendCommand(cmd[:0], "INCRBY", key, strconv.Itoa(1+rng.Intn(100)))
			}
		default:
			b := blob[:64+rng.Intn(len(blob)-64)]
			rng.Read(b)
			random += int64(len(b))
			cmd = appendCommand(cmd[:0], "SET", "blob:"+strconv.Itoa(rng.Intn(10000)), string(b))
		}
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

func (b *bench) compress(ctx context.Context) error {
	o := b.opt
	const maxBytes = 4 << 30 // no retention and so no snapshot refresh within a run
	b.printf("\n== compress: master -> P1 -> P2 (master.compression: zstd) and P2' (none), both of P1;\n")
	b.printf("   pipelined mixed writes for %s: JSON SETs, HSETs, INCR/INCRBY, 10%% random binary SETs\n", o.compressTime)
	master, err := b.startMaster(ctx, "compress-master")
	if err != nil {
		return err
	}
	p1, err := b.startProxy(ctx, "compress-P1", master, maxBytes, "everysec")
	if err != nil {
		return err
	}
	p2, err := b.startProxyOf(ctx, "compress-P2-zstd", p1, maxBytes, "zstd")
	if err != nil {
		return err
	}
	p2n, err := b.startProxyOf(ctx, "compress-P2-none", p1, maxBytes, "none")
	if err != nil {
		return err
	}
	procs := []*child{p1, p2, p2n}
	before := make([]compressCounters, len(procs))
	for i, p := range procs {
		if before[i], err = readCompressCounters(p); err != nil {
			return err
		}
	}
	load, random, err := mixedLoad(ctx, master.addr(), o.compressTime)
	if err != nil {
		return err
	}
	for _, p := range []*child{p2, p2n} {
		err := waitFor(ctx, o.timeout, p.name+" to hold the whole write", func() (bool, string, error) {
			done, lag, err := proxyCaughtUp(master, p)
			return done, fmt.Sprintf("%d bytes behind the master", lag), err
		})
		if err != nil {
			return err
		}
	}
	d := make([]compressCounters, len(procs))
	for i, p := range procs {
		after, err := readCompressCounters(p)
		if err != nil {
			return err
		}
		d[i] = after.minus(before[i])
	}
	b.printf("   write: %.0f MiB, %d commands in %.1fs (%.1f MB/s, %.0f commands/s); %.1f%% of the bytes are random values\n",
		mib(load.bytes), load.cmds, load.elapsed.Seconds(), mbps(load.bytes, load.elapsed),
		float64(load.cmds)/load.elapsed.Seconds(), 100*ratio(random, load.bytes))
	b.printf("%-28s %11s %11s %10s %8s %8s %8s\n", "proxy", "stream MiB", "wire MiB", "wire/strm", "saved", "CPU s", "resyncs")
	for i, p := range procs {
		c := d[i]
		b.printf("%-28s %11.1f %11.1f %10.3f %7.1f%% %8.2f %8d\n", p.name+" (upstream)", mib(c.stream), mib(c.wire),
			ratio(c.wire, c.stream), 100*(1-ratio(c.wire, c.stream)), c.cpu, c.fullSyncs+c.partSyncs)
	}
	c1 := d[0]
	b.printf("\n   P1 sent compressed: %.1f MiB of stream as %.1f MiB on the wire (%.3f, %.1f%% saved)\n",
		mib(c1.sentRaw), mib(c1.sentWire), ratio(c1.sentWire, c1.sentRaw), 100*(1-ratio(c1.sentWire, c1.sentRaw)))
	// P1 serves P2' plainly as well, so its CPU is not the cost of
	// compression alone; P2 against P2' is the receiving side's cost.
	b.printf("   CPU s per GB of stream: P1 %.2f (serves both), P2 zstd %.2f, P2' none %.2f\n",
		c1.cpu/gb(c1.stream), d[1].cpu/gb(d[1].stream), d[2].cpu/gb(d[2].stream))
	return nil
}
