package main

import (
	"context"
	"fmt"
	"os"
	"time"
)

// ingest measures how fast the proxy takes the master's stream into its
// backlog, once per fsync policy, each with a fresh proxy and data dir.
// The rate is the proxy's own offset over the time from the first write
// until it holds the last byte, so a proxy slower than the master shows as
// a lower rate, not as bytes hidden in the master's output buffer.
func (b *bench) ingest(ctx context.Context) error {
	o := b.opt
	const maxBytes = 1 << 30 // the default: retention trims while writing, as in steady state
	b.printf("\n== ingest: master -> replproxy, pipelined %d-byte SETs for %s per fsync policy; backlog.max_bytes 1 GiB\n",
		o.ingestValue, o.ingestSeconds)
	master, err := b.startMaster(ctx, "ingest-master")
	if err != nil {
		return err
	}
	b.printf("%-9s %10s %8s %8s %12s %12s %8s %7s %9s %9s\n",
		"fsync", "taken MiB", "seconds", "MB/s", "best 1s MB/s", "lag end MiB", "CPU%", "fsyncs", "max ms", "refreshes")
	for _, policy := range []string{"always", "everysec", "no"} {
		if err := b.ingestOne(ctx, master, policy, maxBytes); err != nil {
			return fmt.Errorf("fsync %s: %w", policy, err)
		}
	}
	return nil
}

func (b *bench) ingestOne(ctx context.Context, master *child, policy string, maxBytes int64) error {
	o := b.opt
	proxy, err := b.startProxy(ctx, "ingest-proxy-"+policy, master, maxBytes, policy)
	if err != nil {
		return err
	}
	defer func() {
		proxy.Kill()
		if !o.keep {
			os.RemoveAll(proxy.Dir)
		}
	}()
	off0, err := infoField(proxy, "replication", "master_repl_offset")
	if err != nil {
		return err
	}
	cpu0, _ := readCPU(proxy.PID())
	start := time.Now()
	// The best one-second window shows the proxy's speed apart from the
	// ramp-up and from the master's pace at the start.
	var best float64
	lastOff, lastAt := off0, start
	err = sampleWhile(ctx, time.Second, func() error {
		_, err := runLoad(ctx, loadSpec{addr: master.Addr(), valueBytes: o.ingestValue, keys: 1024, duration: o.ingestSeconds})
		return err
	}, func() {
		if off, err := infoField(proxy, "replication", "master_repl_offset"); err == nil {
			now := time.Now()
			best = max(best, mbps(off-lastOff, now.Sub(lastAt)))
			lastOff, lastAt = off, now
		}
	})
	if err != nil {
		return err
	}
	lagAtEnd := max(master.InfoInt("replication", "master_repl_offset")-proxy.InfoInt("replication", "master_repl_offset"), 0)
	err = waitProxyCaughtUp(ctx, o.timeout, master, proxy)
	if err != nil {
		return err
	}
	took := time.Since(start)
	off1, err := infoField(proxy, "replication", "master_repl_offset")
	if err != nil {
		return err
	}
	cpu1, _ := readCPU(proxy.PID())
	backlog, err := proxy.info("backlog")
	if err != nil {
		return err
	}
	// Retention passes the snapshot's offset after max_bytes of stream, and
	// the proxy then fetches a new one (an rdb-only transfer that forks the
	// master), which is part of steady-state ingest; it is counted here.
	stats, err := proxy.info("stats")
	if err != nil {
		return err
	}
	b.printf("%-9s %10.0f %8.1f %8.0f %12.0f %12.1f %8.0f %7d %9.1f %9d\n",
		policy, mib(off1-off0), took.Seconds(), mbps(off1-off0, took), best, mib(lagAtEnd),
		100*(cpu1-cpu0).Seconds()/took.Seconds(), infoInt(backlog, "fsync_count"),
		float64(infoInt(backlog, "fsync_max_usec"))/1000, infoInt(stats, "snapshot_refreshes"))
	return nil
}
