package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The fanout scenarios measure what the proxy is for: taking the cost of
// many replicas off the master (fanout-cpu, fanout-fullsync) without the
// proxy's own memory growing with them (fanout-rss).

// redisCPU reads a Redis process's CPU from INFO rather than /proc: INFO
// has microseconds, /proc only 10 ms ticks, which matters for the small
// figures of a master that feeds one proxy.
func redisCPU(c *child) (float64, error) {
	m, err := c.info("cpu")
	if err != nil {
		return 0, fmt.Errorf("%s: %w", c.name, err)
	}
	var total float64
	for _, k := range []string{"used_cpu_sys", "used_cpu_user"} {
		v, err := strconv.ParseFloat(m[k], 64)
		if err != nil {
			return 0, fmt.Errorf("%s: INFO cpu %s: %q", c.name, k, m[k])
		}
		total += v
	}
	return total, nil
}

// procCPU is readCPU in seconds, 0 when the process is gone: a figure, not
// a reason to abort a run.
func procCPU(c *child) float64 {
	d, _ := readCPU(c.PID())
	return d.Seconds()
}

// teardown ends one setup inside a scenario, as run does between
// scenarios, so the next setup has the CPUs and the disk to itself.
func (b *bench) teardown() {
	b.env.Close()
	if !b.opt.keep {
		b.env.removeDirs()
	}
}

// gb is the unit of the per-volume CPU figures.
func gb(n int64) float64 { return float64(n) / 1e9 }

type cpuRun struct {
	stream    int64   // master_repl_offset delta
	master    float64 // master CPU seconds from the first write until all replicas have the last byte
	proxy     float64 // the proxy's over the same time, when there is one
	write     time.Duration
	caughtUp  time.Duration
	replicas  int
	withProxy bool
}

func (r cpuRun) masterPerGB() float64 { return r.master / gb(r.stream) }

// fanoutCPU measures what feeding replicas costs the master, above what
// its writes alone cost (the floor): one Redis replica, one proxy, and n
// replicas behind one proxy, side by side in each run, -fanout-runs times,
// so that each run's ratios compare setups that saw the same machine.
func (b *bench) fanoutCPU(ctx context.Context) error {
	o := b.opt
	gib := 1.0
	if o.gibSet {
		gib = o.gib
	}
	w := int64(gib * (1 << 30))
	n := o.fanoutReplicas
	b.printf("\n== fanout-cpu: the master's CPU per GB of stream above its no-replica floor: one direct replica, one replproxy,\n")
	b.printf("   %d replicas behind one replproxy; %.2f GiB of %d-byte SETs over %d keys each time, %d runs\n", n, gib, o.valueBytes, o.keys, o.fanoutRuns)
	b.printf("%-4s %10s %10s %10s %10s %12s %12s %12s %12s\n", "run", "alone s/GB", "direct-1", "proxy-1", fmt.Sprintf("proxy-%d", n),
		"proxy-1/dir", fmt.Sprintf("proxy-%d/dir", n), "proxy CPU-1", fmt.Sprintf("proxy CPU-%d", n))
	var one, many []float64
	for run := 0; run < o.fanoutRuns; run++ {
		setups := []struct {
			name     string
			replicas int
			proxy    bool
		}{{"alone", 0, false}, {"direct", 1, false}, {"proxy", 1, true}, {"proxyN", n, true}}
		if run%2 == 1 { // the same order every time would favour one side
			setups[1], setups[2] = setups[2], setups[1]
		}
		got := map[string]cpuRun{}
		for _, setup := range setups {
			r, err := b.fanoutCPUOne(ctx, setup.name, setup.replicas, setup.proxy, w)
			b.teardown()
			if err != nil {
				return fmt.Errorf("run %d, %s: %w", run+1, setup.name, err)
			}
			got[setup.name] = r
		}
		floor := got["alone"].masterPerGB()
		d1, p1, pn := got["direct"].masterPerGB()-floor, got["proxy"].masterPerGB()-floor, got["proxyN"].masterPerGB()-floor
		one, many = append(one, p1/d1), append(many, pn/d1)
		b.printf("%-4d %10.2f %10.2f %10.2f %10.2f %12.3f %12.3f %12.2f %12.2f\n", run+1, floor, d1, p1, pn, p1/d1, pn/d1,
			got["proxy"].proxy/gb(got["proxy"].stream), got["proxyN"].proxy/gb(got["proxyN"].stream))
	}
	b.printf("\n   above the floor, one proxy / one direct replica (target <= 1.1): median %.3f of %v\n", median(one), rounded(one))
	b.printf("   above the floor, %d behind one proxy / one direct replica (target <= 1.5): median %.3f of %v\n", n, median(many), rounded(many))
	return nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func rounded(v []float64) []string {
	var out []string
	for _, x := range v {
		out = append(out, fmt.Sprintf("%.3f", x))
	}
	return out
}

func (b *bench) fanoutCPUOne(ctx context.Context, name string, n int, withProxy bool, w int64) (cpuRun, error) {
	o := b.opt
	r := cpuRun{replicas: n, withProxy: withProxy}
	master, err := b.startMaster(ctx, "cpu-"+name+"-master")
	if err != nil {
		return r, err
	}
	upstream := master
	var proxy *child
	if withProxy {
		if proxy, err = b.startProxy(ctx, "cpu-"+name+"-proxy", master, w+512<<20, "everysec"); err != nil {
			return r, err
		}
		upstream = proxy
	}
	var replicas []*child
	if n > 0 {
		if replicas, err = b.startReplicas(ctx, "cpu-"+name+"-replica", upstream, n); err != nil {
			return r, err
		}
		if err := waitInSync(ctx, 2*time.Minute, master, replicas); err != nil {
			return r, err
		}
	}
	off0, err := infoField(master, "replication", "master_repl_offset")
	if err != nil {
		return r, err
	}
	m0, err := redisCPU(master)
	if err != nil {
		return r, err
	}
	var p0 float64
	if proxy != nil {
		p0 = procCPU(proxy)
	}
	start := time.Now()
	load, err := runLoad(ctx, loadSpec{addr: master.Addr(), valueBytes: o.valueBytes, keys: o.keys, maxBytes: w})
	if err != nil {
		return r, err
	}
	r.write = load.elapsed
	if n > 0 {
		if err := waitInSync(ctx, o.timeout, master, replicas); err != nil {
			b.describeLagging(master, replicas)
			return r, err
		}
	}
	r.caughtUp = time.Since(start)
	m1, err := redisCPU(master)
	if err != nil {
		return r, err
	}
	if proxy != nil {
		r.proxy = procCPU(proxy) - p0
	}
	off1, err := infoField(master, "replication", "master_repl_offset")
	if err != nil {
		return r, err
	}
	// A master with no replica keeps no backlog and its offset stays put;
	// the command bytes sent are then the stream it would have produced.
	r.master, r.stream = m1-m0, off1-off0
	if r.stream == 0 {
		r.stream = load.bytes
	}
	return r, nil
}

func digest(c *child) (string, error) {
	if d := c.Digest(); d != "" {
		return d, nil
	}
	return "", fmt.Errorf("%s: no answer to DEBUG DIGEST", c.name)
}

func (b *bench) fanoutFullsync(ctx context.Context) error {
	o := b.opt
	n := o.fanoutReplicas
	const valueSize = 64
	b.printf("\n== fanout-fullsync: %d new replicas of a synced replproxy at once; master holds %d keys of %d bytes (DEBUG POPULATE)\n",
		n, o.populate, valueSize)
	master, err := b.startMaster(ctx, "fullsync-master")
	if err != nil {
		return err
	}
	if _, err := master.Do("DEBUG", "POPULATE", strconv.Itoa(o.populate), "key", strconv.Itoa(valueSize)); err != nil {
		return fmt.Errorf("DEBUG POPULATE: %w", err)
	}
	proxy, err := b.startProxy(ctx, "fullsync-proxy", master, 1<<30, "everysec")
	if err != nil {
		return err
	}
	// Writes after the proxy's snapshot make each full sync the snapshot
	// plus a stretch of backlog, as in steady state, not the RDB alone.
	extra, err := runLoad(ctx, loadSpec{addr: master.Addr(), valueBytes: 4 << 10, keys: 1024, maxBytes: 32 << 20})
	if err != nil {
		return err
	}
	err = waitProxyCaughtUp(ctx, time.Minute, master, proxy)
	if err != nil {
		return err
	}
	mstats, err := master.info("stats")
	if err != nil {
		return err
	}
	mFull0, mForks0 := infoInt(mstats, "sync_full"), infoInt(mstats, "total_forks")
	pFull0, pPartial0 := proxySyncs(proxy)
	want, err := digest(master)
	if err != nil {
		return err
	}
	keys, _ := master.Do("DBSIZE")
	b.printf("   master: %v keys; %.0f MiB written after the proxy's snapshot; digest %s\n", keys, mib(extra.bytes), want)

	// Started without a master and pointed at the proxy in one quick loop,
	// so the syncs really overlap; starting each with --replicaof would
	// spread them over the seconds the starts take.
	replicas, err := b.startReplicas(ctx, "fullsync-replica", nil, n)
	if err != nil {
		return err
	}
	start := time.Now()
	for _, r := range replicas {
		if _, err := r.Do("REPLICAOF", "127.0.0.1", strconv.Itoa(proxy.Port)); err != nil {
			return fmt.Errorf("%s: REPLICAOF: %w", r.name, err)
		}
	}
	if err := waitInSync(ctx, o.timeout, master, replicas); err != nil {
		b.describeLagging(master, replicas)
		return err
	}
	inSync := time.Since(start)
	// The master takes no writes now, so equal offsets must mean equal
	// data; the digest is what proves it.
	var mismatched []string
	for _, r := range replicas {
		d, err := digest(r)
		if err != nil {
			return err
		}
		if d != want {
			mismatched = append(mismatched, fmt.Sprintf("%s=%s", r.name, d))
		}
	}
	verified := time.Since(start)
	mstats, err = master.info("stats")
	if err != nil {
		return err
	}
	mFull1, mForks1 := infoInt(mstats, "sync_full"), infoInt(mstats, "total_forks")
	pFull1, pPartial1 := proxySyncs(proxy)
	pmem, _ := readMem(proxy.PID())

	b.printf("   %d replicas at the master's offset with their link up after %.1fs; digests checked after %.1fs\n",
		n, inSync.Seconds(), verified.Seconds())
	if len(mismatched) == 0 {
		b.printf("   DEBUG DIGEST: all %d equal to the master's\n", n)
	} else {
		b.printf("   DEBUG DIGEST MISMATCH on %d replicas: %s\n", len(mismatched), strings.Join(mismatched, ", "))
	}
	verdict := "met"
	if mFull1 != mFull0 {
		verdict = "MISSED"
	}
	b.printf("   master sync_full delta %d (target 0: %s), forks %d\n", mFull1-mFull0, verdict, mForks1-mForks0)
	b.printf("   proxy sync_full delta %d (expected %d), sync_partial_ok delta %d; proxy VmHWM %.1f MiB\n",
		pFull1-pFull0, n, pPartial1-pPartial0, mib(pmem.Peak))
	if len(mismatched) > 0 {
		return fmt.Errorf("%d replicas differ from the master", len(mismatched))
	}
	return nil
}

// pacedLoad writes about mbps MB/s for d by running the pipelined load in
// tenth-of-a-second chunks: a moderate, steady load instead of runLoad's
// flat out, which on two cores would starve the replicas being watched.
func pacedLoad(ctx context.Context, addr string, mbps float64, d time.Duration, valueBytes, keys int) (loadResult, error) {
	var total loadResult
	chunk := int64(mbps * 1e6 / 10)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	for time.Since(start) < d {
		r, err := runLoad(ctx, loadSpec{addr: addr, valueBytes: valueBytes, keys: keys, maxBytes: chunk})
		total.bytes += r.bytes
		total.cmds += r.cmds
		if err != nil {
			return total, err
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return total, ctx.Err()
		}
	}
	total.elapsed = time.Since(start)
	return total, nil
}

func (b *bench) fanoutRSS(ctx context.Context) error {
	o := b.opt
	n := o.wideReplicas
	maxBytes := max(int64(o.fanoutMBps*1e6*o.fanoutTime.Seconds())+512<<20, 1<<30)
	b.printf("\n== fanout-rss: master -> replproxy -> %d streaming replicas; about %.0f MB/s of %d-byte SETs for %s\n",
		n, o.fanoutMBps, o.valueBytes, o.fanoutTime)
	f, err := b.startFan(ctx, "wide", maxBytes, n)
	if err != nil {
		return err
	}
	master, proxy, replicas, off0 := f.master, f.proxy, f.replicas, f.off0
	s := newSampler(b, proxy)
	baseline := s.row("in sync", 0)
	// The baseline's peak holds the initial full syncs; the write phase's
	// own peak is the sampled one.
	s.peakRSS = 0
	full0, partial0 := proxySyncs(proxy)

	var maxBehind int64
	sample := func(phase string) {
		behind, _, err := replicasBehind(master, replicas)
		if err != nil {
			b.printf("   (polling replicas: %v)\n", err)
			behind = -1
		}
		maxBehind = max(maxBehind, behind)
		s.row(phase, behind)
	}
	var load loadResult
	err = sampleWhile(ctx, o.interval, func() (err error) {
		load, err = pacedLoad(ctx, master.Addr(), o.fanoutMBps, o.fanoutTime, o.valueBytes, o.keys)
		return err
	}, func() { sample("write") })
	if err != nil {
		return err
	}
	caught := time.Now()
	if err := waitInSync(ctx, o.timeout, master, replicas); err != nil {
		b.describeLagging(master, replicas)
		return err
	}
	caughtUp := time.Since(caught)
	sample("caught up")
	off1, err := infoField(master, "replication", "master_repl_offset")
	if err != nil {
		return err
	}
	full1, partial1 := proxySyncs(proxy)
	final, _ := readMem(proxy.PID())
	stream := off1 - off0

	b.printf("\n   write: %.0f MiB in %.1fs (%.1f MB/s); %d replicas x %.0f MiB = %.0f MiB sent; at most %.1f MiB behind in total,\n",
		mib(load.bytes), load.elapsed.Seconds(), mbps(load.bytes, load.elapsed), n, mib(stream), mib(int64(n)*stream), mib(maxBehind))
	b.printf("   all in sync %.1fs after the last write\n", caughtUp.Seconds())
	b.printf("   RSS baseline (in sync, before writes) %.1f MiB (anon %.1f); peak sampled while streaming %.1f MiB (+%.1f MiB)\n",
		mib(baseline.RSS), mib(baseline.Anon), mib(s.peakRSS), mib(s.peakRSS-baseline.RSS))
	verdict := "met"
	if final.Peak >= rssTarget {
		verdict = "MISSED"
	}
	b.printf("   peak RSS (VmHWM, whole life of the proxy, initial full syncs included): %.1f MiB; target < %d MiB: %s\n",
		mib(final.Peak), rssTarget>>20, verdict)
	b.printf("   downstream syncs while streaming: %d partial, %d full\n", partial1-partial0, full1-full0)
	return nil
}
