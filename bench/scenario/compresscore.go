package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/replproxy/replproxy/internal/mixedload"
	"github.com/replproxy/replproxy/internal/redisproc"
)

// coreOptions set the compress-core scenario.
type coreOptions struct {
	rateMBps float64
	d        time.Duration
	procs    int
	codec    string
}

// coreValueBytes is the size of each SET value of compress-core: big
// values reach hundreds of MB/s of stream at a few thousand commands per
// second, which a master does with CPU to spare on this machine.
const coreValueBytes = 64 << 10

// coreValues cuts n values of coreValueBytes from the mixed stream, so the
// stream compresses as the compress scenario's does.
func coreValues(n int) [][]byte {
	g := mixedload.New(1_700_000_000)
	var stream []byte
	for len(stream) < n*coreValueBytes {
		stream, _ = g.Append(stream)
	}
	vals := make([][]byte, n)
	for i := range vals {
		vals[i] = stream[i*coreValueBytes : (i+1)*coreValueBytes]
	}
	return vals
}

// coreSample is one look at how far behind the master each proxy is.
type coreSample struct {
	p1Lag, p2Lag int64
}

// compressCore: master -> P1 (GOMAXPROCS=-core-procs) -> P2 with
// -core-codec. SETs of 64 KiB values cut from the mixed stream are paced
// at -core-rate MB/s for -core-time. It reports what P1 took of its core
// and whether P2 kept up: its lag at the end of the load, and how long it
// took to catch up after.
func (b *bench) compressCore(ctx context.Context) error {
	o := b.opt.core
	b.printf("\n== compress-core: master -> P1 (GOMAXPROCS=%d) -> P2 (master.compression: %s);\n", o.procs, o.codec)
	b.printf("   SETs of %d KiB values cut from the mixed stream, paced at %.0f MB/s for %s.\n", coreValueBytes>>10, o.rateMBps, o.d)
	const maxBytes = 2 << 30
	master, err := b.startMaster(ctx, "core-master")
	if err != nil {
		return err
	}
	cfg := b.proxyConfig(master, maxBytes, "everysec")
	p1, err := b.env.startProxyAt(ctx, "core-P1", cfg, redisproc.Place{Prefix: []string{"env", "GOMAXPROCS=" + strconv.Itoa(o.procs)}})
	if err != nil {
		return err
	}
	if err := waitProxyCaughtUp(ctx, time.Minute, master, p1); err != nil {
		return err
	}
	p2, err := b.startProxyOf(ctx, "core-P2-"+o.codec, p1, maxBytes, o.codec)
	if err != nil {
		return err
	}
	before, err := readCompressCounters(p1)
	if err != nil {
		return err
	}
	off0, err := infoField(master, "replication", "master_repl_offset")
	if err != nil {
		return err
	}

	sctx, stopSampling := context.WithCancel(ctx)
	var samples []coreSample
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-sctx.Done():
				return
			case <-tick.C:
			}
			m, err1 := infoField(master, "replication", "master_repl_offset")
			o1, err2 := infoField(p1, "replication", "master_repl_offset")
			o2, err3 := infoField(p2, "replication", "master_repl_offset")
			if err1 == nil && err2 == nil && err3 == nil {
				samples = append(samples, coreSample{p1Lag: max(m-o1, 0), p2Lag: max(m-o2, 0)})
			}
		}
	}()
	start := time.Now()
	load, err := coreLoad(ctx, master.Addr(), o.rateMBps*1e6, o.d, coreValues(256))
	stopSampling()
	wg.Wait()
	if err != nil {
		return err
	}
	wall := time.Since(start)
	atEnd, err := readCompressCounters(p1)
	if err != nil {
		return err
	}
	p2LagAtEnd, err := proxyLag(master, p2)
	if err != nil {
		return err
	}
	if err := waitProxyCaughtUp(ctx, b.opt.timeout, master, p2); err != nil {
		return err
	}
	catchUp := time.Since(start) - wall
	// Until P2 caught up, every byte P1 took in was also compressed and
	// sent: the whole cost per GB.
	caught, err := readCompressCounters(p1)
	if err != nil {
		return err
	}
	all := caught.minus(before)
	off1, err := infoField(master, "replication", "master_repl_offset")
	if err != nil {
		return err
	}
	d := atEnd.minus(before)
	var maxP1, maxP2 int64
	for _, s := range samples {
		maxP1, maxP2 = max(maxP1, s.p1Lag), max(maxP2, s.p2Lag)
	}
	stream := off1 - off0
	b.printf("   offered %.0f MB/s; the master produced %.1f MB of stream in %.1fs: %.1f MB/s (%d SETs)\n",
		o.rateMBps, float64(stream)/1e6, wall.Seconds(), mbps(stream, wall), load.cmds)
	b.printf("   P1 during the load: %.2f CPU s in %.1f s of wall time = %.2f cores; %.2f s per GB of stream taken in\n",
		d.cpu, wall.Seconds(), d.cpu/wall.Seconds(), d.cpu/gb(d.stream))
	b.printf("   P1 until P2 caught up: %.2f CPU s for %.1f MB of stream taken in and %.1f MB sent %s (wire/stream %.3f): %.2f s per GB\n",
		all.cpu, float64(all.stream)/1e6, float64(all.sentRaw)/1e6, o.codec, ratio(all.sentWire, all.sentRaw), all.cpu/gb(all.stream))
	b.printf("   lag behind the master, largest sample (every 250 ms): P1 %.1f MB, P2 %.1f MB; P2 at the end of the load %.1f MB, caught up %.1fs later\n",
		float64(maxP1)/1e6, float64(maxP2)/1e6, float64(p2LagAtEnd)/1e6, catchUp.Seconds())
	kept := p2LagAtEnd <= int64(o.rateMBps*1e6) // at most a second of stream behind
	b.printf("   kept up with the master's %.1f MB/s: %t (P2 at most one second of the offered rate behind when the load ended)\n", mbps(stream, wall), kept)
	b.printf("   one core at P1's whole cost per GB carries %.0f MB/s of stream (1000 / s per GB); P1 got %.2f of a core during the load\n",
		1000/(all.cpu/gb(all.stream)), d.cpu/wall.Seconds())
	return nil
}

// coreLoad pipelines SETs of values, cycling over as many keys, at
// rate bytes per second for d, and stops early on ctx. Ahead of the pace
// it pauses; the pipeline's window bounds the burst that then goes out.
func coreLoad(ctx context.Context, addr string, rate float64, d time.Duration, values [][]byte) (loadResult, error) {
	i := 0
	res, err := pipeline(ctx, addr, max(4, pipelineBytes/coreValueBytes), func(sent loadResult) [][]byte {
		for sent.elapsed < d && float64(sent.bytes) > rate*sent.elapsed.Seconds() && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
			sent.elapsed += time.Millisecond
		}
		if sent.elapsed >= d {
			return nil
		}
		v := values[i%len(values)]
		key := "core:" + strconv.Itoa(i%len(values))
		i++
		return [][]byte{fmt.Appendf(nil, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n", len(key), key, len(v)), v, crlf}
	})
	if err != nil {
		return res, fmt.Errorf("core load: %w", err)
	}
	return res, nil
}

// proxyLag is how many bytes of the master's stream proxy does not hold.
func proxyLag(master, proxy *child) (int64, error) {
	m, err := infoField(master, "replication", "master_repl_offset")
	if err != nil {
		return -1, err
	}
	p, err := infoField(proxy, "replication", "master_repl_offset")
	if err != nil {
		return -1, err
	}
	return max(m-p, 0), nil
}
