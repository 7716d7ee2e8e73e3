package proxy_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// Compressed hops (s2 and zstd) caught up on a proxy whose log is cut
// back again and again by failed fsyncs, and whose link the master drops
// between the cuts, while it refreshes its snapshot
// (AdoptSnapshot) from the master under load: the upstream stream keeps
// appending to the one log of its session, each cut ends that session and
// the link resumes partially, and the hops, parked with its writer when
// the cut lands, decode every byte once, in order: their replicas match
// the master by DEBUG DIGEST, and no hop needed a second full sync.
func TestCompressedHopsAcrossCutsAndRefreshes(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Snapshot.RefreshAfter = 256 << 10
	var fail atomic.Bool
	var failed atomic.Int64
	proxy.SetBacklogSync(&cfg, func(f *os.File) error {
		if strings.HasSuffix(f.Name(), ".seg") && fail.CompareAndSwap(true, false) {
			failed.Add(1)
			return fmt.Errorf("fsync %s: injected EIO", f.Name())
		}
		return f.Sync()
	})
	p1 := startProxy(t, cfg)
	var hops []*testProxy
	replicas := []*redisproc.Server{}
	for _, codec := range []string{"s2", "zstd"} {
		hcfg := proxyConfig(t, p1.cfg.Listen)
		hcfg.Master.Compression = codec
		h := startProxy(t, hcfg)
		hops = append(hops, h)
		replicas = append(replicas, redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(h.port)))
	}
	replicas = append(replicas, redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(p1.port)))
	stopLoad := runLoad(t, m, 77)
	const cuts = 4
	partials := func() int64 { return p1.infoInt("stats", "upstream_partial_syncs") }
	resumed := func(prev int64, after string) {
		t.Helper()
		redisproc.Eventually(t, syncTimeout, "a partial resync after "+after, func() (bool, string) {
			n := partials()
			return n > prev, strconv.FormatInt(n, 10)
		})
	}
	for i := 1; i <= cuts; i++ {
		waitOps(t, m, 800)
		prev := partials()
		fail.Store(true)
		redisproc.Eventually(t, syncTimeout, "an injected fsync failure", func() (bool, string) {
			return failed.Load() == int64(i), strconv.FormatInt(failed.Load(), 10)
		})
		resumed(prev, "a cut")
		waitOps(t, m, 400)
		// And the master drops the link: a reconnect with no cut.
		prev = partials()
		if _, err := m.Do("CLIENT", "KILL", "TYPE", "replica"); err != nil {
			t.Fatal(err)
		}
		resumed(prev, "CLIENT KILL")
	}
	waitOps(t, m, 800)
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, m, replicas...)
	t.Logf("cut proxy: %d partial resyncs upstream, %d snapshot refreshes (%d failed); hops: %s, %s",
		p1.infoInt("stats", "upstream_partial_syncs"), p1.infoInt("stats", "snapshot_refreshes"),
		p1.infoInt("stats", "snapshot_refresh_failures"), codecOf(p1, hops[0].port), codecOf(p1, hops[1].port))
	if got := p1.infoInt("stats", "snapshot_refreshes"); got < 1 {
		t.Fatalf("snapshot_refreshes %d: no adoption happened under the stream", got)
	}
	if got := p1.infoInt("stats", "upstream_partial_syncs"); got < 2*cuts {
		t.Fatalf("upstream_partial_syncs %d after %d cuts and as many drops: the link did not resume partially after each", got, cuts)
	}
	expectInt(t, "upstream_full_syncs of the cut proxy", p1.infoInt("stats", "upstream_full_syncs"), 1)
	for i, h := range hops {
		if got := codecOf(p1, h.port); got == "" || got == "(not attached)" {
			t.Fatalf("hop %d: codec %q, want a compressed stream", i, got)
		}
		expectInt(t, fmt.Sprintf("hop %d upstream_full_syncs", i), h.infoInt("stats", "upstream_full_syncs"), 1)
	}
}
