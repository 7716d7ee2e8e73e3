package proxy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/upstream"
)

// Issue 4, point 1: twenty replicas behind one proxy; the master sees one.
func TestTwentyReplicas(t *testing.T) {
	t.Parallel()
	r := startRelay(t, 20)
	stopLoad := runLoad(t, r.master, 21)
	waitOps(t, r.master, 3000)
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "master connected_slaves", r.master.InfoInt("replication", "connected_slaves"), 1)
	expectInt(t, "proxy connected_slaves", r.proxy.infoInt("replication", "connected_slaves"), 20)
	expectInt(t, "master sync_full", r.master.InfoInt("stats", "sync_full"), 1)
	section := r.proxy.info("replicas")
	for i := 0; i < 20; i++ {
		line := section["replica"+strconv.Itoa(i)]
		for _, field := range []string{"state=online", "lag_bytes=0", "ack_offset=", "sent_bytes=", "connected_since="} {
			if !strings.Contains(line, field) {
				t.Fatalf("INFO replicas line %d %q lacks %s", i, line, field)
			}
		}
	}
}

// writeBig pushes about total bytes of stream through the master in 1 MiB
// SETs over a small keyspace, paced to the proxy's ingest.
func writeBig(t *testing.T, m *redisproc.Server, p *testProxy, total int64, each func()) {
	t.Helper()
	value := strings.Repeat("w", 1<<20)
	c := m.Client()
	for written := int64(0); written < total; written += 8 << 20 {
		pipe := c.Pipeline()
		for i := 0; i < 8; i++ {
			pipe.Set(t.Context(), "big"+strconv.Itoa(i), value, 0)
		}
		if _, err := pipe.Exec(t.Context()); err != nil {
			t.Fatal(err)
		}
		waitProxyWithin(t, m, p, 32<<20)
		if each != nil {
			each()
		}
	}
}

func rssKiB(t *testing.T, pid int) int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// slaveLagBytes reads lag_bytes of the proxy's replica at port.
func slaveLagBytes(p *testProxy, port int) int64 {
	for k, v := range p.info("replication") {
		if strings.HasPrefix(k, "slave") && strings.Contains(v, ",port="+strconv.Itoa(port)+",") {
			for _, kv := range strings.Split(v, ",") {
				if n, ok := strings.CutPrefix(kv, "lag_bytes="); ok {
					lag, _ := strconv.ParseInt(n, 10, 64)
					return lag
				}
			}
		}
	}
	return -1
}

// Issue 4, point 2: a stopped replica slows nobody: the others keep up, the
// proxy's memory stays flat (the lag lives on disk), the master never drops
// the proxy; resumed, the replica catches up to an equal digest.
func TestStoppedReplicaHoldsNobodyBack(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Backlog.MaxBytes = 2 << 30
	tp := newProcessProxy(t, cfg)
	r := &relay{master: m, proxy: tp}
	for i := 0; i < 3; i++ {
		r.addReplica(t)
	}
	writeBig(t, m, tp, 64<<20, nil) // warm up buffers before the baseline
	r.waitInSync(t)
	stopped := r.replicas[2]
	stopped.Pause()
	base := rssKiB(t, tp.cmd.Process.Pid)
	peak, worstLag := base, int64(0)
	writeBig(t, m, tp, 512<<20, func() {
		peak = max(peak, rssKiB(t, tp.cmd.Process.Pid))
		for _, s := range r.replicas[:2] {
			worstLag = max(worstLag, slaveLagBytes(tp, s.Port))
		}
	})
	t.Logf("proxy RSS %d KiB before, peak %d KiB; running replicas' worst lag %d bytes; stopped replica lag %d bytes",
		base, peak, worstLag, slaveLagBytes(tp, stopped.Port))
	if peak-base > 10<<10 {
		t.Fatalf("proxy RSS grew by %d KiB while a replica was stopped", peak-base)
	}
	if worstLag > 64<<20 {
		t.Fatalf("a running replica lagged %d bytes behind", worstLag)
	}
	stopped.Resume()
	r.waitInSync(t)
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 1)
	expectInt(t, "master sync_partial_ok (the proxy never reconnected)", m.InfoInt("stats", "sync_partial_ok"), 0)
}

// Issue 4, point 3: past max_lag_bytes a replica is dropped with a logged
// reason, and resyncs (partially) after.
func TestLagPolicyDropsAndResyncs(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Replicas.MaxLagBytes = 8 << 20
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	slow := r.addReplica(t)
	r.waitInSync(t)
	slow.Pause()
	writeBig(t, m, r.proxy, 48<<20, nil)
	redisproc.Eventually(t, syncTimeout, "the lagging replica to be dropped", func() (bool, string) {
		log := tail(r.proxy.logPath, 100)
		return strings.Contains(log, "exceeds replicas.max_lag_bytes"), "not yet"
	})
	slow.Resume()
	r.waitInSync(t)
	if got := r.proxy.infoInt("stats", "sync_partial_ok"); got < 1 {
		t.Fatalf("the dropped replica did not come back partially (sync_partial_ok %d)", got)
	}
	expectInt(t, "proxy sync_full", r.proxy.infoInt("stats", "sync_full"), 2)
}

// Issue 4, point 4: five replicas full-syncing at once share the one stored
// snapshot; with max_concurrent_full_syncs 2 the rest queue. The master
// does not notice.
func TestConcurrentFullSyncsShareOneSnapshot(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	if _, err := m.Do("DEBUG", "POPULATE", "100000", "key", "64"); err != nil {
		t.Fatal(err)
	}
	cfg := proxyConfig(t, m.Addr())
	cfg.Replicas.MaxConcurrentFullSyncs = 2
	cfg.Replicas.RateLimit = 4 << 20 // each transfer takes a while, so they overlap
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := r.proxy.info("replication")["master_link_status"]
		return st == "up", st
	})
	for i := 0; i < 5; i++ {
		r.addReplica(t)
	}
	r.waitInSync(t)
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 1)
	expectInt(t, "proxy sync_full", r.proxy.infoInt("stats", "sync_full"), 5)
	snaps, _ := filepath.Glob(filepath.Join(cfg.DataDir, "snapshot", "*.rdb"))
	if len(snaps) != 1 {
		t.Fatalf("snapshot files: %v", snaps)
	}
	log := tail(r.proxy.logPath, 300)
	if n := strings.Count(log, "replica attached with a full sync from the snapshot"); n != 5 {
		t.Fatalf("%d full syncs from the snapshot in the log, want 5", n)
	}
	if !strings.Contains(log, "full sync queued") {
		t.Fatal("no full sync was queued behind max_concurrent_full_syncs")
	}
	// rate_limit paced each transfer: no RDB went faster than the limit
	// allows, give or take one burst.
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "snapshot sent to replica") {
			continue
		}
		var ev struct {
			Bytes int64   `json:"rdb_bytes"`
			MS    float64 `json:"duration_ms"`
		}
		json.Unmarshal([]byte(line), &ev)
		floor := float64(ev.Bytes-int64(cfg.Replicas.RateLimit)/10) / float64(cfg.Replicas.RateLimit) * 1000
		if ev.MS < floor*0.9 {
			t.Fatalf("%d RDB bytes sent in %.0f ms, faster than rate_limit %d B/s allows", ev.Bytes, ev.MS, cfg.Replicas.RateLimit)
		}
	}
}

// Issue 4, point 5: with ack_mode replicas, WAIT and min-replicas-to-write
// on the master count only writes the proxy's replicas really have.
func TestAckModeReplicasKeepsWaitHonest(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.AckMode = upstream.AckReplicas
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	r.addReplica(t)
	r.waitInSync(t)
	c := m.Client()
	wait := func(timeout time.Duration) int64 {
		t.Helper()
		if err := c.Set(t.Context(), "wait-key", time.Now().String(), 0).Err(); err != nil {
			t.Fatal(err)
		}
		n, err := c.Wait(t.Context(), 1, timeout).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Generous timeouts where 1 is expected: this checks semantics, and an
	// fsync behind other tests' gigabytes can take seconds here.
	if n := wait(20 * time.Second); n != 1 {
		t.Fatalf("WAIT with running replicas: %d, want 1", n)
	}
	for _, s := range r.replicas {
		s.Pause()
	}
	time.Sleep(4 * time.Second) // their last ACKs go stale (3s)
	if n := wait(500 * time.Millisecond); n != 0 {
		t.Fatalf("WAIT with every replica stopped: %d, want 0", n)
	}
	r.replicas[0].Resume()
	if n := wait(20 * time.Second); n != 1 {
		t.Fatalf("WAIT with one replica running again: %d, want 1", n)
	}

	// min-replicas-to-write: the master refuses writes once the proxy,
	// vouching only for its replicas, has been silent for the max lag.
	for _, kv := range [][2]string{{"min-replicas-max-lag", "2"}, {"min-replicas-to-write", "1"}} {
		if err := c.ConfigSet(t.Context(), kv[0], kv[1]).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Set(t.Context(), "k", "accepted", 0).Err(); err != nil {
		t.Fatalf("write with a running replica: %v", err)
	}
	r.replicas[0].Pause()
	redisproc.Eventually(t, 20*time.Second, "writes refused with every replica stopped", func() (bool, string) {
		err := c.Set(t.Context(), "k", "refused?", 0).Err()
		return err != nil && strings.HasPrefix(err.Error(), "NOREPLICAS"), fmt.Sprint(err)
	})
	r.replicas[1].Resume()
	redisproc.Eventually(t, 20*time.Second, "writes accepted with a replica running", func() (bool, string) {
		err := c.Set(t.Context(), "k", "accepted again", 0).Err()
		return err == nil, fmt.Sprint(err)
	})
	r.replicas[0].Resume()
	c.ConfigSet(t.Context(), "min-replicas-to-write", "0")
	r.waitInSync(t)
}
