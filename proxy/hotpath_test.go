package proxy_test

import (
	"testing"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 13, point 2: caught-up replicas are fed the bytes just read, from
// memory; one that falls behind (stopped) is served from its disk cursor
// and rejoins the memory path once it catches up. Writes go on throughout,
// so the handovers happen mid-stream; a gap or a repeated byte would show
// as a digest that differs (or a replica that breaks its link).
func TestLaggingReplicaHandsOverBetweenMemoryAndDisk(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	r := &relay{master: m, proxy: startProxy(t, proxyConfig(t, m.Addr()))}
	// One replica, so every byte the counters show is its own.
	lagging := r.addReplica(t)
	stopLoad := runLoad(t, m, 13)
	waitOps(t, m, 1000)
	waitCaughtUp(t, m, r.replicas...)
	memory := func() int64 { return r.proxy.infoInt("stats", "stream_bytes_from_memory") }
	disk := func() int64 { return r.proxy.infoInt("stats", "stream_bytes_from_disk") }
	if memory() <= 0 {
		t.Fatalf("caught-up replicas were not fed from memory (stream_bytes_from_memory %d)", memory())
	}

	lagging.Pause()
	// More than the socket buffers hold, so the stopped replica's sender
	// must leave the last append behind.
	writeBig(t, m, r.proxy, 24<<20, nil)
	waitOps(t, m, 500)
	disk0 := disk()
	lagging.Resume()
	waitCaughtUp(t, m, lagging)
	if disk() <= disk0 {
		t.Fatalf("the replica that fell behind was not served from disk (stream_bytes_from_disk %d, before resuming %d)", disk(), disk0)
	}
	// Back in step, it is fed from memory again.
	mem0 := memory()
	writeBig(t, m, r.proxy, 16<<20, nil)
	waitCaughtUp(t, m, lagging)
	t.Logf("from memory after catching up: %d bytes of 16 MiB", memory()-mem0)
	if got := memory() - mem0; got < 1<<20 {
		t.Fatalf("after catching up only %d bytes of 16 MiB went from memory: the replica did not rejoin the memory path", got)
	}
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "proxy sync_partial_ok (nobody reconnected)", r.proxy.infoInt("stats", "sync_partial_ok"), 0)
	expectInt(t, "proxy sync_full", r.proxy.infoInt("stats", "sync_full"), 1)
}
