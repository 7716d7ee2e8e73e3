package proxy_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// toxicLink is an in-process TCP proxy between two hops, standing in for a
// cross-region link: latency, a bandwidth cap, and cuts.
func toxicLink(t *testing.T, upstream string, toxics ...string) (*toxiproxy.Proxy, string) {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	listen := "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	link := toxiproxy.NewProxy(srv, "region-link", listen, upstream)
	if err := link.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(link.Stop)
	for _, tx := range toxics {
		if _, err := link.Toxics.AddToxicJson(strings.NewReader(tx)); err != nil {
			t.Fatalf("toxic %s: %v", tx, err)
		}
	}
	return link, listen
}

// Proxies chained across a slow, narrow link that is cut for a while
// under load: the far proxy resyncs partially when the link returns, and
// the far replica ends equal to the master.
func TestChainOverACutLink(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	p1 := startProxy(t, proxyConfig(t, m.Addr()))
	link, far := toxicLink(t, p1.cfg.Listen,
		`{"type":"latency","stream":"downstream","attributes":{"latency":40,"jitter":10}}`,
		`{"type":"bandwidth","stream":"downstream","attributes":{"rate":4096}}`)
	cfg := proxyConfig(t, far)
	cfg.Master.Compression = "zstd"
	p2 := startProxy(t, cfg)
	r := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(p2.port))
	stopLoad := runLoad(t, m, 37)
	waitOps(t, m, 1000)
	waitCaughtUp(t, m, r)

	link.Stop() // the link is cut: connections drop, new ones are refused
	waitOps(t, m, 1500)
	time.Sleep(2 * time.Second)
	if err := link.Start(); err != nil {
		t.Fatal(err)
	}
	waitOps(t, m, 1000)
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, m, r)
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 1)
	expectInt(t, "P2 upstream_full_syncs", p2.infoInt("stats", "upstream_full_syncs"), 1)
	if got := p2.infoInt("stats", "upstream_partial_syncs"); got < 1 {
		t.Fatalf("P2 upstream_partial_syncs %d: the cut was not healed partially", got)
	}
}
