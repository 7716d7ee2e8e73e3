package main

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// fullResyncError says a P1 full-synced from the master during the load.
type fullResyncError struct{ name string }

func (e *fullResyncError) Error() string {
	return e.name + " full-synced from the master during the load: the counts would mix two streams"
}

// compressPaired measures what each codec costs the sending proxy with
// the senders side by side: master -> P1-none -> P2-none, master -> P1-s2
// -> P2-s2, master -> P1-zstd -> P2-zstd, all three P1s replicas of the
// same master during the same mixed load. A codec's cost is its P1's CPU
// minus P1-none's, per GB of stream, over the same seconds: the machine's
// other work weighs on both alike, where the compress scenario's passes,
// a minute apart, each met a different load. Then the encoders alone, in
// this process, with every proxy stopped.
func (b *bench) compressPaired(ctx context.Context) error {
	o := b.opt
	b.printf("\n== compress-paired: master -> P1-<codec> -> P2-<codec> for none, s2 and zstd side by side;\n")
	b.printf("   pipelined mixed writes for %s, %d runs. cost = P1-<codec> CPU - P1-none CPU, per GB of stream.\n", o.compressTime, o.compressRuns)
	b.printf("%4s %10s %9s %9s %9s %9s %9s %9s %9s %10s %10s %10s\n", "run", "stream MB", "none s/GB", "s2 s/GB", "zstd s/GB",
		"s2 cost", "zstd cost", "s2 wire", "zstd wire", "s2 alone", "zstd std", "zstd/std")
	codecs := []string{"none", "s2", "zstd"}
	var s2Costs, zstdRatios []float64
	for run := 1; run <= o.compressRuns; run++ {
		d, err := b.compressPairedRun(ctx, run, codecs)
		var resynced *fullResyncError
		if errors.As(err, &resynced) {
			// Seen on the loaded machine: a P1 the master dropped. The
			// run is reported and left out; its logs stay with -keep.
			b.printf("%4d   left out: %v\n", run, err)
			b.teardown()
			continue
		}
		if err != nil {
			return err
		}
		b.teardown()
		alone, err := codecsAlone(64 << 20)
		if err != nil {
			return err
		}
		s2a, _ := aloneByName(alone, "s2, the proxy's settings")
		std, _ := aloneByName(alone, "zstd standard (fastest level)")
		perGB := func(c compressCounters) float64 { return c.cpu / gb(c.stream) }
		s2Cost := perGB(d["s2"]) - perGB(d["none"])
		zstdCost := perGB(d["zstd"]) - perGB(d["none"])
		s2Costs, zstdRatios = append(s2Costs, s2Cost), append(zstdRatios, zstdCost/std.cpuPerGB)
		b.printf("%4d %10.1f %9.2f %9.2f %9.2f %9.2f %9.2f %9.3f %9.3f %10.2f %10.2f %9.2fx\n", run, float64(d["none"].stream)/1e6,
			perGB(d["none"]), perGB(d["s2"]), perGB(d["zstd"]), s2Cost, zstdCost,
			ratio(d["s2"].sentWire, d["s2"].sentRaw), ratio(d["zstd"].sentWire, d["zstd"].sentRaw),
			s2a.cpuPerGB, std.cpuPerGB, zstdCost/std.cpuPerGB)
	}
	b.printf("   s2 cost per run (goal <= 3 s/GB): %.2f; zstd cost / the standard encoder alone (goal <= 1.3x): %.2f\n", s2Costs, zstdRatios)
	return nil
}

// compressPairedRun starts the three chains, writes the mixed load and
// returns each P1's counters over it, by codec.
func (b *bench) compressPairedRun(ctx context.Context, run int, codecs []string) (map[string]compressCounters, error) {
	const maxBytes = 4 << 30
	pre := fmt.Sprintf("paired-%d-", run)
	master, err := b.startMaster(ctx, pre+"master")
	if err != nil {
		return nil, err
	}
	p1s := map[string]*child{}
	var p2s []*child
	for _, c := range codecs {
		p1, err := b.startProxy(ctx, pre+"P1-"+c, master, maxBytes, "everysec")
		if err != nil {
			return nil, err
		}
		p2, err := b.startProxyOf(ctx, pre+"P2-"+c, p1, maxBytes, c)
		if err != nil {
			return nil, err
		}
		p1s[c], p2s = p1, append(p2s, p2)
	}
	before := map[string]compressCounters{}
	for c, p := range p1s {
		if before[c], err = readCompressCounters(p); err != nil {
			return nil, err
		}
	}
	if _, _, err := mixedLoad(ctx, master.Addr(), b.opt.compressTime, 0); err != nil {
		return nil, err
	}
	for _, p := range p2s {
		if err := waitProxyCaughtUp(ctx, b.opt.timeout, master, p); err != nil {
			return nil, fmt.Errorf("%s: %w", p.name, err)
		}
	}
	// A moment for the last flush timers: every byte is counted.
	time.Sleep(100 * time.Millisecond)
	d := map[string]compressCounters{}
	for c, p := range p1s {
		after, err := readCompressCounters(p)
		if err != nil {
			return nil, err
		}
		d[c] = after.minus(before[c])
		if d[c].fullSyncs > 0 {
			return nil, &fullResyncError{p.name}
		}
		if d[c].partSyncs > 0 {
			// The same stream goes on; only the reconnection's cost is in.
			b.printf("   (%s resynced partially %d times during the load; see its log)\n", p.name, d[c].partSyncs)
		}
	}
	return d, nil
}
