package main

import (
	"context"
	"fmt"
	"time"
)

// rssTarget is the memory the proxy should stay under with a large backlog
// and 20 replicas catching up: the backlog lives in files and is sent with
// sendfile, so neither its size nor the replicas' lag should reach the heap.
const rssTarget = 64 << 20

// sampler prints one table row per reading of the proxy process.
type sampler struct {
	b       *bench
	proxy   *child
	start   time.Time
	lastCPU time.Duration
	lastAt  time.Time
	peakRSS int64
}

func newSampler(b *bench, proxy *child) *sampler {
	s := &sampler{b: b, proxy: proxy, start: time.Now(), lastAt: time.Now()}
	s.lastCPU, _ = readCPU(proxy.PID())
	b.printf("%-13s %7s %12s %12s %9s %9s %6s\n", "phase", "t(s)", "backlog MiB", "behind MiB", "RSS MiB", "anon MiB", "CPU%")
	return s
}

// row reads the proxy's RSS and CPU from /proc and its backlog size from
// INFO; behind is the replicas' missing bytes, or -1 when not measured.
func (s *sampler) row(phase string, behind int64) memStats {
	pid := s.proxy.PID()
	mem, err := readMem(pid)
	if err != nil {
		s.b.printf("%-13s (cannot read /proc/%d: %v)\n", phase, pid, err)
		return mem
	}
	cpu, _ := readCPU(pid)
	now := time.Now()
	cpuPct := 100 * (cpu - s.lastCPU).Seconds() / now.Sub(s.lastAt).Seconds()
	s.lastCPU, s.lastAt = cpu, now
	s.peakRSS = max(s.peakRSS, mem.RSS)
	backlog := "?"
	if n, err := infoField(s.proxy, "backlog", "backlog_bytes"); err == nil {
		backlog = fmt.Sprintf("%.0f", mib(n))
	}
	behindText := "-"
	if behind >= 0 {
		behindText = fmt.Sprintf("%.0f", mib(behind))
	}
	s.b.printf("%-13s %7.1f %12s %12s %9.1f %9.1f %6.0f\n", phase, now.Sub(s.start).Seconds(),
		backlog, behindText, mib(mem.RSS), mib(mem.Anon), cpuPct)
	return mem
}

func (b *bench) rss(ctx context.Context) error {
	o := b.opt
	w := b.writeBytes()
	maxBytes := w + 512<<20
	b.printf("\n== rss: master -> replproxy -> %d replicas; %.2f GiB of %d-byte SETs over %d keys;\n", o.replicas, o.gib, o.valueBytes, o.keys)
	b.printf("   backlog.max_bytes %.0f MiB, segment %d MiB, fsync everysec; replicas SIGSTOPped during the write\n", mib(maxBytes), o.segmentMiB)
	f, err := b.startFan(ctx, "rss", maxBytes, o.replicas)
	if err != nil {
		return err
	}
	master, proxy, replicas, startOff := f.master, f.proxy, f.replicas, f.off0

	s := newSampler(b, proxy)
	initial := s.row("initial sync", 0)
	for _, r := range replicas {
		r.Pause()
	}
	var load loadResult
	err = sampleWhile(ctx, o.interval, func() (err error) {
		load, err = runLoad(ctx, loadSpec{addr: master.Addr(), valueBytes: o.valueBytes, keys: o.keys, maxBytes: w})
		return err
	}, func() { s.row("write", -1) })
	if err != nil {
		return err
	}
	err = waitProxyCaughtUp(ctx, o.timeout, master, proxy)
	if err != nil {
		return err
	}
	written := s.row("written", -1)
	b.printf("   write: %.0f MiB in %.1fs (%.0f MB/s from the client)\n", mib(load.bytes), load.elapsed.Seconds(), mbps(load.bytes, load.elapsed))
	if o.evict {
		n, err := evictBacklog(proxyDataDir(proxy))
		if err != nil {
			return err
		}
		b.printf("   evicted %.0f MiB of segments from the page cache\n", mib(n))
	}
	resumeOff, err := infoField(master, "replication", "master_repl_offset")
	if err != nil {
		return err
	}
	full0, partial0 := proxySyncs(proxy)
	resumed := time.Now()
	for _, r := range replicas {
		r.Resume()
	}
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	var caughtUp time.Duration
	for caughtUp == 0 {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
		behind, up, err := replicasBehind(master, replicas)
		if err != nil {
			b.printf("   (polling replicas: %v)\n", err)
			for _, r := range replicas {
				if !r.Running() {
					b.printf("   %s has exited; its log is in %s (kept with -keep)\n", r.name, r.Dir)
				}
			}
			continue
		}
		s.row("catch-up", behind)
		if behind == 0 && up == len(replicas) {
			caughtUp = time.Since(resumed)
		} else if time.Since(resumed) > o.timeout {
			b.printf("   NOT caught up after %s: %.0f MiB still behind, %d/%d links up\n", o.timeout, mib(behind), up, len(replicas))
			b.describeLagging(master, replicas)
			break
		}
	}
	full1, partial1 := proxySyncs(proxy)
	final, _ := readMem(proxy.PID())

	b.printf("\n   backlog %.0f MiB -> RSS after initial sync %.1f MiB, after the write %.1f MiB, peak sampled %.1f MiB\n",
		mib(resumeOff-startOff), mib(initial.RSS), mib(written.RSS), mib(s.peakRSS))
	verdict := "met"
	if final.Peak >= rssTarget {
		verdict = "MISSED"
	}
	b.printf("   peak RSS (VmHWM, whole life of the proxy): %.1f MiB; target < %d MiB: %s\n", mib(final.Peak), rssTarget>>20, verdict)
	if caughtUp > 0 {
		total := int64(len(replicas)) * (resumeOff - startOff)
		b.printf("   catch-up: %d replicas x %.0f MiB in %.1fs = %.0f MB/s sent in aggregate\n",
			len(replicas), mib(resumeOff-startOff), caughtUp.Seconds(), mbps(total, caughtUp))
	}
	// None means the replicas kept their connections through the stop;
	// partial ones mean the proxy or the replica timed the link out.
	b.printf("   downstream syncs during catch-up: %d partial, %d full\n", partial1-partial0, full1-full0)
	return nil
}
