package proxy_test

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 5, point 1: manual failover. S, a replica of M, is promoted and the
// proxy is pointed at it with REPLICAOF: S accepts the proxy partially
// (through its replid2), the proxy shifts its IDs and drops its replicas,
// and they come back partially with S's ID. Nobody full-syncs.
func TestManualFailoverRepointsPartially(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	s := redisproc.Start(t, append(masterArgs, "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))...)
	r := &relay{master: m, proxy: startProxy(t, proxyConfig(t, m.Addr()))}
	r.addReplica(t)
	r.addReplica(t)
	stopLoad := runLoad(t, m, 31)
	waitOps(t, m, 2000)
	stopLoad() // clients stop writing to the old master, as in any failover
	// The load's short-lived keys would keep expiring, and an expiry DEL
	// that reaches the proxy but not yet S when S is promoted puts the
	// proxy ahead of S: a full sync this test is not about.
	if _, err := m.Do("DEBUG", "SET-ACTIVE-EXPIRE", "0"); err != nil {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, m, append([]*redisproc.Server{s}, r.replicas...)...)
	proxyFull := r.proxy.infoInt("stats", "sync_full")

	if err := s.ReplicaOf("", 0); err != nil { // REPLICAOF NO ONE
		t.Fatal(err)
	}
	w, err := dialWire(r.proxy.cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, _ := w.do("REPLICAOF", "NO", "ONE"); !strings.HasPrefix(got, "-ERR replproxy holds no data") {
		t.Fatalf("REPLICAOF NO ONE on the proxy: %q", got)
	}
	// Repoint the way Sentinel reconfigures a replica (sentinel.c).
	for _, cmd := range [][]string{
		{"MULTI"}, {"SLAVEOF", "127.0.0.1", strconv.Itoa(s.Port)}, {"CONFIG", "REWRITE"},
		{"CLIENT", "KILL", "TYPE", "normal"}, {"CLIENT", "KILL", "TYPE", "pubsub"},
	} {
		if got, _ := w.do(cmd...); got != "+OK" && got != "+QUEUED" {
			t.Fatalf("%v: %q", cmd, got)
		}
	}
	if got, _ := w.do("EXEC"); got != "+OK\n+OK\n:0\n:0" {
		t.Fatalf("EXEC of Sentinel's reconfiguration: %q", got)
	}
	if got, _ := w.do("REPLICAOF", "127.0.0.1", strconv.Itoa(s.Port)); got != "+OK Already connected to specified master" {
		t.Fatalf("repeated REPLICAOF: %q", got)
	}
	stopLoad = runLoad(t, s, 32)
	waitOps(t, s, 2000)
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, s, r.replicas...)

	expectInt(t, "S sync_full", s.InfoInt("stats", "sync_full"), 0)
	if got := s.InfoInt("stats", "sync_partial_ok"); got < 1 {
		t.Fatalf("S sync_partial_ok = %d: the proxy was not accepted partially", got)
	}
	expectInt(t, "proxy upstream_full_syncs", r.proxy.infoInt("stats", "upstream_full_syncs"), 1)
	expectInt(t, "proxy sync_full", r.proxy.infoInt("stats", "sync_full"), proxyFull)
	sID := s.Info("replication")["master_replid"]
	for i, rep := range r.replicas {
		if got := rep.Info("replication")["master_replid"]; got != sID {
			t.Fatalf("replica %d master_replid %s, S's %s", i, got, sID)
		}
	}
	if got := r.proxy.info("replication")["master_replid2"]; got != m.Info("replication")["master_replid"] {
		t.Fatalf("proxy replid2 %s is not the old master's ID", got)
	}
}

// Issue 5, point 3: a chain M → P1 → P2 → R. Restarting P1 and then P2
// under load resyncs every hop partially.
func TestProxyChainRestartsPartially(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	p1 := startProxy(t, proxyConfig(t, m.Addr()))
	p2 := startProxy(t, proxyConfig(t, p1.cfg.Listen))
	r := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(p2.port))
	stopLoad := runLoad(t, m, 33)
	waitOps(t, m, 2000)
	waitCaughtUp(t, m, r)

	p1.stop()
	waitOps(t, m, 500)
	p1.start()
	waitOps(t, m, 1000)
	waitCaughtUp(t, m, r)
	expectInt(t, "P2 upstream_full_syncs after P1 restarts", p2.infoInt("stats", "upstream_full_syncs"), 1)
	expectInt(t, "restarted P1 sync_full", p1.infoInt("stats", "sync_full"), 0)

	p2.stop()
	waitOps(t, m, 500)
	p2.start()
	waitOps(t, m, 1000)
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, m, r)
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 1)
	expectInt(t, "restarted P2 upstream_full_syncs", p2.infoInt("stats", "upstream_full_syncs"), 0)
	expectInt(t, "restarted P2 sync_full", p2.infoInt("stats", "sync_full"), 0)
	if got := p1.infoInt("stats", "sync_partial_ok"); got < 1 {
		t.Fatalf("P1 sync_partial_ok %d: P2 did not resync partially", got)
	}
}

// Issue 5, point 5: between two proxies the stream can travel zstd-
// compressed: digests stay equal, and fewer bytes cross the link than on a
// plain link carrying the same stream, as each proxy counts.
func TestCompressionBetweenProxies(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	p1 := startProxy(t, proxyConfig(t, m.Addr()))
	zcfg := proxyConfig(t, p1.cfg.Listen)
	zcfg.Master.Compression = "zstd"
	zipped := startProxy(t, zcfg)
	plain := startProxy(t, proxyConfig(t, p1.cfg.Listen))
	rz := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(zipped.port))
	rp := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(plain.port))
	stopLoad := runLoad(t, m, 34)
	waitOps(t, m, 3000)
	// A restart of the compressed hop resumes compressed and partially.
	zipped.stop()
	zipped.start()
	waitOps(t, m, 2000)
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, m, rz, rp)

	zWire, zRaw := zipped.infoInt("stats", "upstream_wire_bytes"), zipped.infoInt("stats", "upstream_stream_bytes")
	pWire, pRaw := plain.infoInt("stats", "upstream_wire_bytes"), plain.infoInt("stats", "upstream_stream_bytes")
	t.Logf("compressed link: %d wire bytes for %d stream bytes since restart; plain link: %d wire for %d", zWire, zRaw, pWire, pRaw)
	// The counters are read a moment apart under load: compare ratios.
	if zWire*10 >= zRaw*9 || pWire*100 < pRaw*99 {
		t.Fatalf("compressed hop %d wire / %d stream; plain hop %d wire / %d stream", zWire, zRaw, pWire, pRaw)
	}
	sent, wire := p1.infoInt("stats", "compressed_stream_bytes"), p1.infoInt("stats", "compressed_wire_bytes")
	if sent == 0 || wire >= sent {
		t.Fatalf("P1 compressed %d stream bytes into %d wire bytes", sent, wire)
	}
	expectInt(t, "restarted compressed hop upstream_full_syncs", zipped.infoInt("stats", "upstream_full_syncs"), 0)
}

// Issue 5, point 3 (failover part): a failover at the top of a chain
// M → P1 → P2 → R reaches every hop by the same ID shift, partially.
func TestFailoverPropagatesDownAChain(t *testing.T) {
	t.Parallel()
	// No replication PINGs from M: one that reaches P1 but not S after S
	// is promoted puts P1 ahead of S, and S then full-syncs it, as it would
	// a Redis replica; that is not what this test is about.
	m := redisproc.Start(t, append([]string{"--repl-ping-replica-period", "3600", "--repl-timeout", "7200"}, masterArgs...)...)
	s := redisproc.Start(t, append(masterArgs, "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))...)
	p1 := startProxy(t, proxyConfig(t, m.Addr()))
	p2 := startProxy(t, proxyConfig(t, p1.cfg.Listen))
	r := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(p2.port))
	stopLoad := runLoad(t, m, 35)
	waitOps(t, m, 2000)
	stopLoad()
	// Nor expiry DELs from the load's short-lived keys, for the same reason.
	if _, err := m.Do("DEBUG", "SET-ACTIVE-EXPIRE", "0"); err != nil {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, m, s, r)

	if err := s.ReplicaOf("", 0); err != nil {
		t.Fatal(err)
	}
	w, err := dialWire(p1.cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, _ := w.do("REPLICAOF", "127.0.0.1", strconv.Itoa(s.Port)); got != "+OK" {
		t.Fatalf("REPLICAOF on P1: %q", got)
	}
	stopLoad = runLoad(t, s, 36)
	waitOps(t, s, 2000)
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, s, r)
	sID := s.Info("replication")["master_replid"]
	for name, got := range map[string]string{
		"P1": p1.info("replication")["master_replid"], "P2": p2.info("replication")["master_replid"],
		"R": r.Info("replication")["master_replid"],
	} {
		if got != sID {
			t.Fatalf("%s master_replid %s, S's %s", name, got, sID)
		}
	}
	expectInt(t, "S sync_full", s.InfoInt("stats", "sync_full"), 0)
	expectInt(t, "P1 upstream_full_syncs", p1.infoInt("stats", "upstream_full_syncs"), 1)
	expectInt(t, "P2 upstream_full_syncs", p2.infoInt("stats", "upstream_full_syncs"), 1)
	expectInt(t, "P2 sync_full (R's first sync only)", p2.infoInt("stats", "sync_full"), 1)
	if got := p2.infoInt("stats", "sync_partial_ok"); got < 1 {
		t.Fatalf("R did not come back partially through P2 (sync_partial_ok %d)", got)
	}
}

// A changed master.addr in the config file takes effect on SIGHUP.
func TestReloadOnSIGHUPRepoints(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	s := redisproc.Start(t, append(masterArgs, "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))...)
	tp := newProcessProxy(t, proxyConfig(t, m.Addr()))
	r := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	if _, err := m.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, m, s, r)
	if err := s.ReplicaOf("", 0); err != nil {
		t.Fatal(err)
	}
	tp.cfg.Master.Addr = s.Addr()
	raw, _ := yaml.Marshal(tp.cfg)
	os.WriteFile(tp.logPath+".yaml", raw, 0o644)
	tp.cmd.Process.Signal(syscall.SIGHUP)
	redisproc.Eventually(t, 20*time.Second, "the proxy to follow the reloaded master", func() (bool, string) {
		info := tp.info("replication")
		return info["master_port"] == strconv.Itoa(s.Port) && info["master_link_status"] == "up", info["master_port"]
	})
	if _, err := s.Do("SET", "k", "after reload"); err != nil {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, s, r)
	expectInt(t, "S sync_full", s.InfoInt("stats", "sync_full"), 0)
}

// Repointed to a master of another history, the proxy takes its RDB and
// starts a new backlog; its replicas full-sync from the new snapshot and
// end equal to the new master, with nothing left of the old data.
func TestRepointToANewHistory(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	other := redisproc.Start(t, masterArgs...)
	if _, err := other.Do("DEBUG", "POPULATE", "5000", "other", "32"); err != nil {
		t.Fatal(err)
	}
	r := &relay{master: m, proxy: startProxy(t, proxyConfig(t, m.Addr()))}
	r.addReplica(t)
	if _, err := m.Do("SET", "old-history", "x"); err != nil {
		t.Fatal(err)
	}
	r.waitInSync(t)
	w, err := dialWire(r.proxy.cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, _ := w.do("REPLICAOF", "127.0.0.1", strconv.Itoa(other.Port)); got != "+OK" {
		t.Fatalf("REPLICAOF: %q", got)
	}
	if _, err := other.Do("SET", "new-history", "y"); err != nil {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, other, r.replicas...)
	expectInt(t, "proxy upstream_full_syncs", r.proxy.infoInt("stats", "upstream_full_syncs"), 2)
	expectInt(t, "proxy sync_full", r.proxy.infoInt("stats", "sync_full"), 2)
	if got := r.proxy.info("replication")["master_replid"]; got != other.Info("replication")["master_replid"] {
		t.Fatalf("proxy replid %s, the new master's %s", got, other.Info("replication")["master_replid"])
	}
}
