package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/replproxy/replproxy/internal/wan"
)

// wanFlaps cuts the link -wan-flaps times for -wan-flap-down under a
// steady write at a quarter of the link, on the chain with s2: each cut
// outlasts proxy B's repl_timeout, so its link to proxy A breaks, and it
// must come back partially every time.
func (b *bench) wanFlaps(ctx context.Context) error {
	o := b.opt.wan
	b.printf("\n   link flaps: the veth goes down for %s, %d times, under %.1f MB/s of writes (chain-s2;\n", o.flapDown, o.flaps, o.rateMbit/8/4)
	b.printf("   proxy B's master.repl_timeout 2s, so every cut breaks its link to proxy A)\n")
	reg, err := b.wanSetup(ctx, "wan-flaps")
	if err != nil {
		return err
	}
	defer reg.link.Close()
	defer b.env.Close()
	l, m := reg.link, reg.master
	pa, err := b.env.startProxyAt(ctx, "wan-flaps-proxyA", b.wanProxyConfig(m, "none")+"replicas:\n  timeout: 2s\n", region(l.NsA, wan.AddrA))
	if err != nil {
		return err
	}
	cfgB := strings.Replace(b.wanProxyConfig(pa, "s2"), "master:\n", "master:\n  repl_timeout: 2s\n  connect_timeout: 1s\n", 1)
	pb, err := b.env.startProxyAt(ctx, "wan-flaps-proxyB", cfgB, region(l.NsB, wan.AddrB))
	if err != nil {
		return err
	}
	var replicas []*child
	for i := range o.replicas {
		r, err := b.env.startRedisAt(ctx, fmt.Sprintf("wan-flaps-replica%d", i), region(l.NsB, wan.AddrB),
			"--replicaof", pb.Host, fmt.Sprint(pb.Port))
		if err != nil {
			return err
		}
		replicas = append(replicas, r)
	}
	if err := waitInSync(ctx, o.settle, m, replicas); err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	full0, _ := infoField(m, "stats", "sync_full")

	lctx, stopLoad := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var loadErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, loadErr = wan.Burst(lctx, "unix", m.Socket(), int64(o.rateMbit*1e6/8/4), 24*time.Hour)
	}()
	for i := range o.flaps {
		sleepCtx(ctx, o.flapDown)
		if err := l.SetUp(ctx, false); err != nil {
			stopLoad()
			wg.Wait()
			return err
		}
		sleepCtx(ctx, o.flapDown)
		if err := l.SetUp(ctx, true); err != nil {
			stopLoad()
			wg.Wait()
			return err
		}
		b.printf("   flap %d done\n", i+1)
	}
	sleepCtx(ctx, o.flapDown)
	stopLoad()
	wg.Wait()
	if loadErr != nil && !errors.Is(loadErr, context.Canceled) {
		return loadErr
	}
	if err := waitInSync(ctx, o.settle, m, replicas); err != nil {
		return err
	}
	same, err := digestsEqual(m, replicas)
	if err != nil {
		return err
	}
	full1, _ := infoField(m, "stats", "sync_full")
	bFull, _ := infoField(pb, "stats", "upstream_full_syncs")
	bPart, _ := infoField(pb, "stats", "upstream_partial_syncs")
	aFull, _ := infoField(pa, "stats", "sync_full")
	aPart, _ := infoField(pa, "stats", "sync_partial_ok")
	rFull, _ := infoField(pb, "stats", "sync_full")
	b.printf("   master full syncs during the flaps: %d\n", full1-full0)
	b.printf("   proxy B from proxy A: %d full sync (its first), %d partial resyncs; proxy A served %d full, %d partial\n", bFull, bPart, aFull, aPart)
	b.printf("   region-B replicas: %d full syncs from proxy B (their first), digests equal: %t\n", rFull, same)
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
