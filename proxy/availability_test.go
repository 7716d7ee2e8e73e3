package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/resp"
	"github.com/replproxy/replproxy/upstream"
)

// fakeReplica is a raw replica connection: it full-syncs, reads the RDB,
// and then does only what the test tells it to.
type fakeReplica struct {
	conn   net.Conn
	br     *bufio.Reader
	offset int64 // from +FULLRESYNC
}

func dialFakeReplica(addr string) (*fakeReplica, error) {
	return dialFakeReplicaVia(&net.Dialer{}, addr)
}

// dialFakeReplicaVia dials with d, which may shape the socket (a small
// receive buffer, say) before it connects.
func dialFakeReplicaVia(d *net.Dialer, addr string) (*fakeReplica, error) {
	d.Timeout = 2 * time.Second
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	f := &fakeReplica{conn: c, br: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	out := resp.AppendCommand(nil, "REPLCONF", "capa", "eof", "capa", "psync2")
	out = resp.AppendCommand(out, "PSYNC", "?", "-1")
	if _, err := c.Write(out); err != nil {
		c.Close()
		return nil, err
	}
	return f, nil
}

// readRDB reads the REPLCONF reply, +FULLRESYNC and the RDB.
func (f *fakeReplica) readRDB() error {
	for {
		line, err := f.br.ReadString('\n')
		if err != nil {
			return err
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "" || line == "+OK":
		case strings.HasPrefix(line, "+FULLRESYNC"):
			fields := strings.Fields(line)
			f.offset, _ = strconv.ParseInt(fields[2], 10, 64)
		case strings.HasPrefix(line, "$"):
			n, err := strconv.ParseInt(line[1:], 10, 64)
			if err != nil {
				return fmt.Errorf("preamble %q", line)
			}
			_, err = io.CopyN(io.Discard, f.br, n)
			return err
		default:
			return fmt.Errorf("unexpected line %q", line)
		}
	}
}

func (f *fakeReplica) ack(off int64) error {
	f.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := f.conn.Write(resp.AppendCommand(nil, "REPLCONF", "ACK", strconv.FormatInt(off, 10)))
	return err
}

// Issue 9, point 4: DropAll (upstream replication ID changes) while fifty
// replicas reconnect in a loop: no race report under -race, no panic. Half
// use plain SYNC, which reaches the full-sync queue without touching the
// store or the log, so a replica not yet fully built would be seen.
func TestDropAllDuringReconnectStorm(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	s := redisproc.Start(t, append(masterArgs, "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))...)
	if _, err := m.Do("DEBUG", "POPULATE", "20000", "key", "32"); err != nil {
		t.Fatal(err)
	}
	cfg := proxyConfig(t, m.Addr())
	// One slow full sync at a time: most replicas of the storm are queued,
	// registered and waiting, when DropAll comes.
	cfg.Replicas.MaxConcurrentFullSyncs = 1
	cfg.Replicas.RateLimit = 128 << 10
	// Every log write orders its goroutine before the next writer's, which
	// would hide from the race detector what this test looks for.
	cfg.Log.Level = "warn"
	p := startProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := p.info("replication")["master_link_status"]
		return st == "up", st
	})
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 9))
			sync := []string{"PSYNC", "?", "-1"}
			if seed%2 == 0 {
				sync = []string{"SYNC"}
			}
			for ctx.Err() == nil {
				c, err := net.DialTimeout("tcp", p.cfg.Listen, 2*time.Second)
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				c.SetDeadline(time.Now().Add(time.Duration(50+rng.IntN(400)) * time.Millisecond))
				c.Write(resp.AppendCommand(nil, sync...))
				io.Copy(io.Discard, c)
				c.Close()
			}
		}(uint64(i))
	}
	defer func() { stop(); wg.Wait() }()

	// Twelve failovers, each an ID shift the proxy follows with DropAll.
	// Progress is read from the masters, not from the proxy's INFO, which
	// would order the replicas' setup before DropAll for the same reason.
	masters := []*redisproc.Server{m, s}
	w, err := dialWire(p.cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i := 1; i <= 12; i++ {
		promoted, demoted := masters[i%2], masters[(i+1)%2]
		if err := promoted.ReplicaOf("", 0); err != nil {
			t.Fatal(err)
		}
		if err := demoted.ReplicaOf("127.0.0.1", promoted.Port); err != nil {
			t.Fatal(err)
		}
		if got, err := w.do("REPLICAOF", "127.0.0.1", strconv.Itoa(promoted.Port)); err != nil || !strings.HasPrefix(got, "+OK") {
			t.Fatalf("REPLICAOF: %q %v", got, err)
		}
		redisproc.Eventually(t, syncTimeout, "the proxy to follow the promoted master", func() (bool, string) {
			for k, v := range promoted.Info("replication") {
				if strings.HasPrefix(k, "slave") && strings.Contains(v, ",port="+strconv.Itoa(p.port)+",state=online") {
					return true, v
				}
			}
			return false, "not attached"
		})
		time.Sleep(100 * time.Millisecond)
	}
	want := masters[0].Info("replication")["master_replid"]
	if got := p.info("replication")["master_replid"]; got != want {
		t.Fatalf("proxy master_replid %s, the last promoted master's %s", got, want)
	}
	// Each failover was a partial resync with a new ID: an ID shift and a DropAll.
	expectInt(t, "proxy upstream_partial_syncs", p.infoInt("stats", "upstream_partial_syncs"), 12)
}

// Issue 9, point 7: fifty cuts of the upstream link a second apart; the
// proxy resumes within 1.5 s at the median, as a Redis replica retrying
// every second would, instead of backing off as if the master had failed.
func TestUpstreamCutsReconnectFast(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	link, addr := toxicLink(t, m.Addr())
	p := startProxy(t, proxyConfig(t, addr))
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := p.info("replication")["master_link_status"]
		return st == "up", st
	})
	var took []time.Duration
	for i := 0; i < 50; i++ {
		before := p.infoInt("stats", "upstream_partial_syncs")
		cut := time.Now()
		link.Stop()
		if err := link.Start(); err != nil {
			t.Fatal(err)
		}
		redisproc.Eventually(t, 30*time.Second, "the link to resume", func() (bool, string) {
			n := p.infoInt("stats", "upstream_partial_syncs")
			return n > before, strconv.FormatInt(n, 10)
		})
		took = append(took, time.Since(cut))
		time.Sleep(time.Until(cut.Add(time.Second)))
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	median := took[len(took)/2]
	t.Logf("reconnect after a cut: min %s, median %s, max %s", took[0], median, took[len(took)-1])
	if median > 1500*time.Millisecond {
		t.Fatalf("median reconnect %s after a cut, want under 1.5s", median)
	}
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 1)
}

// Issue 9, point 6 (first half): a replica acknowledging more than it was
// sent is dropped with a logged reason, and WAIT on the master does not
// count it.
func TestAckBeyondSentIsDropped(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.AckMode = upstream.AckReplicas
	p := startProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := p.info("replication")["master_link_status"]
		return st == "up", st
	})
	f, err := dialFakeReplica(p.cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer f.conn.Close()
	if err := f.readRDB(); err != nil {
		t.Fatal(err)
	}
	if err := f.ack(1<<63 - 1); err != nil {
		t.Fatal(err)
	}
	c := m.Client()
	if err := c.Set(t.Context(), "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	n, err := c.Wait(t.Context(), 1, 2*time.Second).Result()
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("WAIT 1 returned %d with only a lying replica behind the proxy", n)
	}
	if strings.Contains(p.info("replication")["slave0"], "offset=9223372036854775807") {
		t.Fatal("INFO shows the lying ACK")
	}
	if !strings.Contains(tail(p.logPath, 200), "replica acknowledged bytes it was never sent") {
		t.Fatal("the lying replica was not logged")
	}
}

// Issue 9, point 6 (second half): on an idle master, a SIGSTOPped replica
// is dropped once its last ACK is older than replicas.timeout, and comes
// back partially after SIGCONT.
func TestSilentReplicaDroppedByTimeout(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Replicas.Timeout = proxy.Duration(4 * time.Second)
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	rep := r.addReplica(t)
	if _, err := m.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	r.waitInSync(t)
	rep.Pause()
	redisproc.Eventually(t, 30*time.Second, "the stopped replica to be dropped", func() (bool, string) {
		n := r.proxy.infoInt("replication", "connected_slaves")
		return n == 0, strconv.FormatInt(n, 10)
	})
	if log := tail(r.proxy.logPath, 200); !strings.Contains(log, "over replicas.timeout") {
		t.Fatalf("no logged reason for the drop:\n%s", log)
	}
	rep.Resume()
	if _, err := m.Do("SET", "k", "v2"); err != nil {
		t.Fatal(err)
	}
	r.waitInSync(t)
	if got := r.proxy.infoInt("stats", "sync_partial_ok"); got < 1 {
		t.Fatalf("the dropped replica did not come back partially (sync_partial_ok %d)", got)
	}
	expectInt(t, "proxy sync_full", r.proxy.infoInt("stats", "sync_full"), 1)
}

// writeStream pushes about total bytes of stream through the master in
// 256 KiB SETs over a small keyspace, paced to the proxy's ingest.
func writeStream(t *testing.T, m *redisproc.Server, p *testProxy, total int64) {
	t.Helper()
	value := strings.Repeat("s", 256<<10)
	c := m.Client()
	for written := int64(0); written < total; written += 1 << 20 {
		pipe := c.Pipeline()
		for i := 0; i < 4; i++ {
			pipe.Set(t.Context(), "stream"+strconv.Itoa(i), value, 0)
		}
		if _, err := pipe.Exec(t.Context()); err != nil {
			t.Fatal(err)
		}
		waitProxyWithin(t, m, p, 8<<20)
	}
}

// Issue 9, point 2: the last refresh is persisted, so with min_interval
// 10m five restarts in a minute cause at most one rdb-only transfer (each
// one forks the master, which counts it in sync_full).
func TestRestartsKeepMinInterval(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Listen = "127.0.0.1:" + strconv.Itoa(restartablePort(t))
	cfg.Snapshot.MinInterval = proxy.Duration(10 * time.Minute)
	cfg.Snapshot.RefreshAfter = 1 << 20
	p := startProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := p.info("replication")["master_link_status"]
		return st == "up", st
	})
	for i := 0; i < 5; i++ {
		writeStream(t, m, p, 2<<20) // a refresh is due again
		time.Sleep(3 * time.Second)
		p.stop()
		p.start()
		redisproc.Eventually(t, syncTimeout, "the restarted proxy's link", func() (bool, string) {
			st := p.info("replication")["master_link_status"]
			return st == "up", st
		})
	}
	time.Sleep(3 * time.Second)
	refreshes := m.InfoInt("stats", "sync_full") - 1 // the first is the proxy's initial sync
	t.Logf("rdb-only transfers over five restarts: %d", refreshes)
	if refreshes > 1 {
		t.Fatalf("%d rdb-only transfers in five restarts with min_interval 10m, want at most 1", refreshes)
	}
	expectInt(t, "proxy upstream_full_syncs after restarts", p.infoInt("stats", "upstream_full_syncs"), 0)
}

// restartablePort returns a free port below the kernel's ephemeral range,
// so that no outgoing connection takes it while the proxy restarts.
func restartablePort(t *testing.T) int {
	for i := 0; i < 100; i++ {
		port := 20000 + rand.IntN(12000)
		if ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}

// replicaSyncing reports whether the proxy has started a full sync for the
// replica listening on port (past wait_bgsave).
func replicaSyncing(p *testProxy, port int) (bool, string) {
	for k, v := range p.info("replicas") {
		if strings.HasPrefix(k, "replica") && strings.Contains(v, ",port="+strconv.Itoa(port)+",") {
			return !strings.Contains(v, "state=wait_bgsave"), v
		}
	}
	return false, "not attached"
}

// Issue 9, point 3: with retention passing the snapshot under load and
// min_interval 10m, a new replica starts its full sync within 30 s. While
// the stream after the snapshot fits in the hold, the snapshot stays
// usable (no refresh, no fork); past it, a waiting replica gets a refresh
// whatever min_interval says.
func TestNewReplicaStartsWithin30s(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Backlog.MaxBytes = 4 << 20
	cfg.Snapshot.MinInterval = proxy.Duration(10 * time.Minute)
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	stopLoad := runLoad(t, m, 91)
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := r.proxy.info("replication")["master_link_status"]
		return st == "up", st
	})
	writeStream(t, m, r.proxy, 6<<20)
	if first := r.proxy.infoInt("backlog", "backlog_first_offset"); first > r.proxy.infoInt("backlog", "snapshot_offset")+1 {
		t.Fatalf("retention passed the snapshot within the hold (first %d)", first)
	}
	for phase, more := range []int64{0, 16 << 20} {
		writeStream(t, m, r.proxy, more)
		rep := r.addReplica(t)
		redisproc.Eventually(t, 30*time.Second, fmt.Sprintf("phase %d: the new replica's full sync to start", phase), func() (bool, string) {
			return replicaSyncing(r.proxy, rep.Port)
		})
	}
	stopLoad()
	r.waitInSync(t)
	// The background load may pass the hold before phase 1 on its own: that
	// is one refresh min_interval allows (the first), for its own reason.
	// Every fork is a logged refresh, and the waiting replica got one.
	log := tail(r.proxy.logPath, 100000)
	refreshes := int64(strings.Count(log, "snapshot refresh starting"))
	expectInt(t, "master sync_full (the initial sync and the refreshes the proxy logged)", m.InfoInt("stats", "sync_full"), 1+refreshes)
	if refreshes < 1 || refreshes > 2 {
		t.Fatalf("%d refreshes: want one for the waiting replica, and at most one the load brought on before it", refreshes)
	}
	for _, line := range []string{"retention holds the stream after the snapshot", "retention passed the snapshot"} {
		if !strings.Contains(log, line) {
			t.Fatalf("the log lacks %q", line)
		}
	}
}

// Issue 9, point 1: a chain M → A (large backlog) → B (4 MiB backlog).
// After ten times B's backlog has passed, a new replica of B syncs within
// 60 s: B asks A, over the refresh capability, for a snapshot newer than
// A's own, and A renews its own first. A transfers at most 2 RDBs to B.
// A second small proxy B2 asking at the same time shares A's one refresh.
func TestChainRefreshesThroughAProxy(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	a := startProxy(t, proxyConfig(t, m.Addr()))
	small := func() *testProxy {
		cfg := proxyConfig(t, a.cfg.Listen)
		cfg.Backlog.MaxBytes = 4 << 20
		return startProxy(t, cfg)
	}
	b, b2 := small(), small()
	r1 := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(b.port))
	redisproc.WaitInSync(t, syncTimeout, m, r1)
	writeStream(t, m, a, 40<<20)
	waitProxyWithin(t, m, b, 0)
	waitProxyWithin(t, m, b2, 0)
	before, refreshes := a.infoInt("stats", "sync_full"), a.infoInt("stats", "snapshot_refreshes")
	r2 := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(b.port))
	r3 := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(b2.port))
	redisproc.WaitInSync(t, 60*time.Second, m, r1, r2, r3)
	transfers := a.infoInt("stats", "sync_full") - before
	t.Logf("A served %d RDBs to B and B2 for their new replicas", transfers)
	if transfers > 4 {
		t.Fatalf("A transferred %d RDBs to B and B2, want at most 2 each", transfers)
	}
	// B and B2 may have refreshed on their own while the writes ran; for
	// their new replicas, A refreshes at most once, whoever asks first.
	if n := a.infoInt("stats", "snapshot_refreshes") - refreshes; n > 1 {
		t.Fatalf("A refreshed %d times for B and B2, want one refresh shared", n)
	}
	for _, p := range []*testProxy{b, b2} {
		if got := p.infoInt("stats", "snapshot_refreshes"); got < 1 {
			t.Fatalf("snapshot_refreshes %d", got)
		}
		expectInt(t, "upstream_full_syncs", p.infoInt("stats", "upstream_full_syncs"), 1)
	}
}

// rdbOnlyRefuser stands between a proxy and a real master and answers
// REPLCONF rdb-only with an error, as Redis 6.0 or a restrictive ACL does.
func rdbOnlyRefuser(t *testing.T, master string) string {
	return rdbOnlyInterposer(t, master, false)
}

// rdbOnlyInterposer refuses REPLCONF rdb-only, or with drop closes the
// connection instead, as a flaky link or a crashing upstream would.
func rdbOnlyInterposer(t *testing.T, master string, drop bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				interpose(c, master, drop)
			}()
		}
	}()
	return ln.Addr().String()
}

func interpose(c net.Conn, master string, drop bool) {
	defer c.Close()
	mc, err := net.Dial("tcp", master)
	if err != nil {
		return
	}
	defer mc.Close()
	cbr, mbr := bufio.NewReader(c), bufio.NewReader(mc)
	rd := resp.NewReader(cbr, resp.DefaultLimits())
	for {
		args, err := rd.ReadCommand()
		if err != nil {
			return
		}
		if len(args) == 0 {
			continue
		}
		cmd := strings.ToLower(string(args[0]))
		if cmd == "replconf" && len(args) > 1 && strings.EqualFold(string(args[1]), "rdb-only") {
			if drop {
				return
			}
			c.Write([]byte("-ERR rdb-only transfers are not allowed here (test interposer)\r\n"))
			continue
		}
		strs := make([]string, len(args))
		for i, a := range args {
			strs[i] = string(a)
		}
		if _, err := mc.Write(resp.AppendCommand(nil, strs...)); err != nil {
			return
		}
		if cmd == "psync" || cmd == "sync" {
			break
		}
		line, err := mbr.ReadString('\n')
		if err != nil {
			return
		}
		c.Write([]byte(line))
	}
	go func() { io.Copy(mc, cbr); mc.Close() }()
	io.Copy(c, mbr)
}

// Issue 11, point 5: with a master that refuses rdb-only, once retention
// passes the snapshot, a new replica still syncs within 60 s: the proxy
// falls back to a full resync on its main link, logs it and counts it.
func TestRDBOnlyRefusedFallsBackToFullSync(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, rdbOnlyRefuser(t, m.Addr()))
	cfg.Backlog.MaxBytes = 4 << 20
	cfg.Snapshot.HoldMaxBytes = 1 << 20
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := r.proxy.info("replication")["master_link_status"]
		return st == "up", st
	})
	writeStream(t, m, r.proxy, 12<<20)
	r.addReplica(t)
	redisproc.WaitInSync(t, 60*time.Second, m, r.replicas...)
	if got := r.proxy.infoInt("stats", "upstream_fallback_full_syncs"); got < 1 {
		t.Fatalf("upstream_fallback_full_syncs %d", got)
	}
	if log := tail(r.proxy.logPath, 100000); !strings.Contains(log, "falling back to a full resync on the main link") {
		t.Fatal("the fallback is not logged")
	}
}

// openDeletedSegments counts segment files under dir that this process
// holds open although retention removed them.
func openDeletedSegments(t *testing.T, dir string) int {
	fds, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(target, dir) && strings.Contains(target, ".seg (deleted)") {
			n++
		}
	}
	return n
}

// Issue 9, "replica hygiene": replicas that read nothing but keep ACKing
// hold segments retention removed; past replicas.timeout they are dropped
// with a logged reason, so those files are released.
func TestPinningReplicasAreDropped(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	// Segments larger than what the sockets buffer, so a stalled reader
	// stops inside one.
	cfg.Backlog.SegmentBytes = 8 << 20
	cfg.Backlog.MaxBytes = 16 << 20
	cfg.Snapshot.HoldMaxBytes = 1 << 20
	cfg.Replicas.Timeout = proxy.Duration(4 * time.Second)
	p := startProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := p.info("replication")["master_link_status"]
		return st == "up", st
	})
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	for i := 0; i < 3; i++ {
		f, err := dialFakeReplica(p.cfg.Listen)
		if err != nil {
			t.Fatal(err)
		}
		defer f.conn.Close()
		f.conn.(*net.TCPConn).SetReadBuffer(64 << 10) // no autotuned window
		if err := f.readRDB(); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { // ACKs every second, reads nothing
			defer wg.Done()
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					if f.ack(f.offset) != nil {
						return
					}
				}
			}
		}()
	}
	writeStream(t, m, p, 40<<20)
	redisproc.Eventually(t, 30*time.Second, "the pinning replicas to be dropped", func() (bool, string) {
		n := p.infoInt("replication", "connected_slaves")
		return n == 0, strconv.FormatInt(n, 10) + " attached"
	})
	if n := strings.Count(tail(p.logPath, 100000), "held a segment retention removed"); n < 1 {
		t.Fatal("no drop names the pinned segment")
	}
	redisproc.Eventually(t, 10*time.Second, "removed segments to be released", func() (bool, string) {
		n := openDeletedSegments(t, cfg.DataDir)
		return n == 0, strconv.Itoa(n) + " open"
	})
}

// Issue 9, "never silent": a replica waiting for a snapshot shows its
// state, how long it has waited and why, in INFO and in the metrics, and
// the log says so.
func TestWaitingReplicaIsVisible(t *testing.T) {
	t.Parallel()
	cfg := proxyConfig(t, "127.0.0.1:"+strconv.Itoa(redisproc.FreePort(t)))
	cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	p := startProxy(t, cfg)
	f, err := dialFakeReplica(p.cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer f.conn.Close()
	redisproc.Eventually(t, 10*time.Second, "the waiting replica in INFO", func() (bool, string) {
		line := p.info("replicas")["replica0"]
		_, waited, _ := strings.Cut(line, "wait_reason=no_history,wait_seconds=")
		n, _ := strconv.Atoi(waited)
		return strings.Contains(line, "state=wait_bgsave") && n >= 2, line
	})
	res, err := http.Get("http://" + cfg.MetricsListen + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.Contains(string(body), `replproxy_replica_snapshot_wait_seconds{reason="no_history",replica=`) {
		t.Fatalf("/metrics lacks the waiting replica:\n%s", body)
	}
	if !strings.Contains(tail(p.logPath, 100), "replica waits for a snapshot") {
		t.Fatal("the wait is not logged")
	}
}

// Failed refreshes back off (2 s, then 4 s...) instead of retrying at once,
// and after three in a row with a replica waiting for a snapshot past
// retention, the proxy falls back to a full resync on its main link.
func TestFailedRefreshesBackOffThenFallBack(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, rdbOnlyInterposer(t, m.Addr(), true))
	cfg.Backlog.MaxBytes = 4 << 20
	cfg.Snapshot.HoldMaxBytes = 1 << 20
	// At most one attempt before the replica comes: the first, as no
	// refresh is on record; the others wait for the replica's demand.
	cfg.Snapshot.MinInterval = proxy.Duration(10 * time.Minute)
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := r.proxy.info("replication")["master_link_status"]
		return st == "up", st
	})
	writeStream(t, m, r.proxy, 12<<20)
	start := time.Now()
	r.addReplica(t)
	redisproc.WaitInSync(t, 60*time.Second, m, r.replicas...)
	took := time.Since(start)
	failures := r.proxy.infoInt("stats", "snapshot_refresh_failures")
	t.Logf("the replica synced after %s, %d failed refreshes", took.Round(time.Millisecond), failures)
	expectInt(t, "failed refreshes before the fallback", failures, 3)
	// Attempts at 0 (perhaps before the replica came), 2 s and 6 s.
	if took < 4*time.Second {
		t.Fatalf("three refreshes and the fallback took %s: no backoff between them (2 s, then 4 s)", took)
	}
	expectInt(t, "upstream_fallback_full_syncs", r.proxy.infoInt("stats", "upstream_fallback_full_syncs"), 1)
}

// Any replica-role client may ask for a fresh snapshot with the refresh
// capability, and each refresh forks the master. A client asking again and
// again, each time for the stream's current end, gets at most one refresh
// per urgent floor (10 s), not one per request.
func TestRefreshDemandsCannotForkTheMasterAtWill(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Snapshot.MinInterval = proxy.Duration(10 * time.Minute)
	p := startProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := p.info("replication")["master_link_status"]
		return st == "up", st
	})
	c := m.Client()
	deadline := time.Now().Add(12 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		c.Set(t.Context(), "k"+strconv.Itoa(i), "v", 0)
		end := p.infoInt("replication", "master_repl_offset")
		conn, err := net.DialTimeout("tcp", cfg.Listen, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var req []byte
		req = resp.AppendCommand(req, "REPLCONF", "capa", fanout.CapaRefresh)
		req = resp.AppendCommand(req, "REPLCONF", "rdb-only", "1")
		req = resp.AppendCommand(req, "PSYNC", "?", strconv.FormatInt(end, 10))
		conn.Write(req)
		time.Sleep(700 * time.Millisecond)
		conn.Close()
	}
	// The demand a client left behind may still run one refresh.
	time.Sleep(2 * time.Second)
	if n := m.InfoInt("stats", "sync_full"); n > 3 {
		t.Fatalf("master sync_full %d after 12 s of refresh demands: at most the initial sync and 2 refreshes", n)
	}
}
