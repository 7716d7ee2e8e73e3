package proxy_test

import (
	"strconv"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 25: between proxies the stream travels in the best codec both
// speak. P1 offers s2 and zstd; P1z offers only zstd, as a replproxy from
// before s2 did (it ignores the s2 capa). Downstream proxies ask:
//   - auto of P1: s2;
//   - zstd of P1: zstd (what a downstream from before s2 asks for);
//   - auto of P1z: zstd, the only codec both have;
//   - s2 of P1z: nothing they share, so a plain stream.
//
// Every replica ends with the master's digest, each hop's codec shows in
// its upstream's INFO replicas, a compressed hop carries fewer wire bytes
// than stream bytes and the plain one does not, and a restarted s2 hop
// resumes partially, compressed again.
func TestCodecsNegotiatedBetweenProxies(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	p1 := startProxy(t, proxyConfig(t, m.Addr()))
	oldCfg := proxyConfig(t, m.Addr())
	oldCfg.Replicas.Compression = []string{"zstd"}
	p1z := startProxy(t, oldCfg)

	type hop struct {
		name, upstream, asks, want string
		up                         *testProxy
		p                          *testProxy
		r                          *redisproc.Server
	}
	hops := []*hop{
		{name: "auto of P1", up: p1, asks: "auto", want: "s2"},
		{name: "zstd of P1", up: p1, asks: "zstd", want: "zstd"},
		{name: "auto of P1z", up: p1z, asks: "auto", want: "zstd"},
		{name: "s2 of P1z", up: p1z, asks: "s2", want: ""},
	}
	for _, h := range hops {
		cfg := proxyConfig(t, h.up.cfg.Listen)
		cfg.Master.Compression = h.asks
		h.p = startProxy(t, cfg)
		h.r = redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(h.p.port))
	}
	stopLoad := runLoad(t, m, 251)
	waitOps(t, m, 2000)
	// A restart of the s2 hop resumes partially, in s2 again.
	hops[0].p.stop()
	hops[0].p.start()
	waitOps(t, m, 2000)
	stopLoad()
	all := []*redisproc.Server{}
	for _, h := range hops {
		all = append(all, h.r)
	}
	redisproc.WaitInSync(t, syncTimeout, m, all...)

	for _, h := range hops {
		got := codecOf(h.up, h.p.port)
		if got != h.want {
			t.Errorf("%s (master.compression %s): codec %q, want %q", h.name, h.asks, got, h.want)
		}
		wire, raw := h.p.infoInt("stats", "upstream_wire_bytes"), h.p.infoInt("stats", "upstream_stream_bytes")
		t.Logf("%s: codec %q, %d wire bytes for %d stream bytes", h.name, got, wire, raw)
		// s2 packs no history across blocks, and under a slow test load a
		// block is a few small sends: it saves less than zstd here, but
		// a plain hop saves nothing (its wire bytes include the reply line).
		compressed := wire*100 < raw*97
		if compressed != (h.want != "") {
			t.Errorf("%s: %d wire bytes for %d stream bytes, compressed %t, want %t", h.name, wire, raw, compressed, h.want != "")
		}
	}
	expectInt(t, "restarted s2 hop upstream_full_syncs", hops[0].p.infoInt("stats", "upstream_full_syncs"), 0)
	if got := hops[0].p.infoInt("stats", "upstream_partial_syncs"); got < 1 {
		t.Fatalf("restarted s2 hop upstream_partial_syncs %d: it did not resume partially", got)
	}
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 2)
}

// codecOf is the codec the upstream's INFO replicas shows for the replica
// that announced port; "" for a plain stream.
func codecOf(up *testProxy, port int) string {
	for _, line := range up.info("replicas") {
		if !strings.Contains(line, ",port="+strconv.Itoa(port)+",") {
			continue
		}
		for _, f := range strings.Split(line, ",") {
			if v, ok := strings.CutPrefix(f, "codec="); ok {
				return v
			}
		}
		return ""
	}
	return "(not attached)"
}
