package main

import (
	"context"
	"fmt"
	"time"
)

// catchup measures one replica catching up a long outage from the proxy's
// backlog. The replica SAVEs while in sync, so its RDB carries the
// replication ID and offset, and is then killed: each restart from that RDB
// asks for a partial resync from the same offset, so the same bytes can be
// caught up twice, from evicted and then from warm page cache.
func (b *bench) catchup(ctx context.Context) error {
	o := b.opt
	w := b.writeBytes()
	maxBytes := w + 512<<20
	b.printf("\n== catchup: one replica restarts after %.2f GiB of %d-byte SETs over %d keys; fsync everysec\n", o.gib, o.valueBytes, o.keys)
	master, err := b.startMaster(ctx, "catchup-master")
	if err != nil {
		return err
	}
	proxy, err := b.startProxy(ctx, "catchup-proxy", master, maxBytes, "everysec")
	if err != nil {
		return err
	}
	replica, err := b.startReplica(ctx, "catchup-replica", proxy)
	if err != nil {
		return err
	}
	if err := waitInSync(ctx, time.Minute, master, []*child{replica}); err != nil {
		return err
	}
	if _, err := replica.Do("SAVE"); err != nil {
		return fmt.Errorf("replica SAVE: %w", err)
	}
	base, err := infoField(replica, "replication", "slave_repl_offset")
	if err != nil {
		return err
	}
	replica.Kill()
	load, err := runLoad(ctx, loadSpec{addr: master.Addr(), valueBytes: o.valueBytes, keys: o.keys, maxBytes: w})
	if err != nil {
		return err
	}
	err = waitProxyCaughtUp(ctx, o.timeout, master, proxy)
	if err != nil {
		return err
	}
	b.printf("   write: %.0f MiB in %.1fs (%.0f MB/s from the client) while the replica was down\n",
		mib(load.bytes), load.elapsed.Seconds(), mbps(load.bytes, load.elapsed))
	b.printf("%-14s %12s %9s %9s  %s\n", "page cache", "caught up MiB", "seconds", "MB/s", "sync")

	modes := []string{"evicted", "warm"}
	if !o.evict {
		modes = modes[1:]
	}
	for _, mode := range modes {
		if mode == "evicted" {
			if _, err := evictBacklog(proxyDataDir(proxy)); err != nil {
				return err
			}
		}
		full0, partial0 := proxySyncs(proxy)
		// From the exec on: the RDB is keys*value bytes and loads in
		// milliseconds, so nearly all of it is the stream.
		start := time.Now()
		if err := b.env.Try(func() { replica.Restart(b.env) }); err != nil {
			return err
		}
		if err := waitInSync(ctx, o.timeout, master, []*child{replica}); err != nil {
			return err
		}
		took := time.Since(start)
		end, err := infoField(replica, "replication", "slave_repl_offset")
		if err != nil {
			return err
		}
		full1, partial1 := proxySyncs(proxy)
		kind := "partial (+CONTINUE)"
		if full1 > full0 || partial1 == partial0 {
			kind = fmt.Sprintf("NOT partial: %d full, %d partial", full1-full0, partial1-partial0)
		}
		b.printf("%-14s %12.0f %9.2f %9.0f  %s\n", mode, mib(end-base), took.Seconds(), mbps(end-base, took), kind)
		replica.Kill()
	}
	return nil
}
