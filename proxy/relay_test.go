package proxy_test

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

const syncTimeout = 90 * time.Second

// relay is the basic topology: a master, the proxy, and replicas of the proxy.
type relay struct {
	master   *redisproc.Server
	proxy    *testProxy
	replicas []*redisproc.Server
}

// masterArgs give the master a backlog that covers a proxy restart, so a
// full sync in these tests can only come from the proxy misbehaving.
var masterArgs = []string{"--repl-backlog-size", "64mb"}

func startRelay(t *testing.T, replicas int, extraMasterArgs ...string) *relay {
	t.Helper()
	m := redisproc.Start(t, append(append([]string{}, masterArgs...), extraMasterArgs...)...)
	p := startProxy(t, proxyConfig(t, m.Addr()))
	r := &relay{master: m, proxy: p}
	for i := 0; i < replicas; i++ {
		r.addReplica(t)
	}
	return r
}

func (r *relay) addReplica(t *testing.T) *redisproc.Server {
	t.Helper()
	s := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(r.proxy.port))
	r.replicas = append(r.replicas, s)
	return s
}

func (r *relay) waitInSync(t *testing.T) {
	t.Helper()
	redisproc.WaitInSync(t, syncTimeout, r.master, r.replicas...)
}

// runLoad writes until the returned func is called; a test that fails
// before calling it still has the load stopped at cleanup.
func runLoad(t *testing.T, m *redisproc.Server, seed int64) func() {
	t.Helper()
	// Rate-limited: on 2 cores under -race an unbounded load starves the
	// very processes under test.
	load := redisproc.StartLoad(context.Background(), m, redisproc.LoadOptions{DBs: 3, Seed: seed, Rate: 750})
	var once sync.Once
	var err error
	stop := func() { once.Do(func() { _, err = load.Stop() }) }
	t.Cleanup(stop)
	return func() {
		t.Helper()
		stop()
		if err != nil {
			t.Fatalf("load: %v", err)
		}
	}
}

// waitCaughtUp waits, under load, until each replica has reached the
// master's offset as it was when the wait began.
func waitCaughtUp(t *testing.T, m *redisproc.Server, replicas ...*redisproc.Server) {
	t.Helper()
	target := m.InfoInt("replication", "master_repl_offset")
	for _, s := range replicas {
		redisproc.Eventually(t, syncTimeout, "replica to catch up with the master", func() (bool, string) {
			info := s.Info("replication")
			off, _ := strconv.ParseInt(info["slave_repl_offset"], 10, 64)
			return info["master_link_status"] == "up" && off >= target,
				info["master_link_status"] + " at " + info["slave_repl_offset"] + ", target " + strconv.FormatInt(target, 10)
		})
	}
}

func waitOps(t *testing.T, m *redisproc.Server, more int64) {
	t.Helper()
	start := m.InfoInt("stats", "total_commands_processed")
	redisproc.Eventually(t, 30*time.Second, "master to process more commands", func() (bool, string) {
		n := m.InfoInt("stats", "total_commands_processed")
		return n-start >= more, strconv.FormatInt(n-start, 10)
	})
}

func expectInt(t *testing.T, what string, got, want int64) {
	t.Helper()
	if got != want {
		t.Fatalf("%s = %d, want %d", what, got, want)
	}
}

// Issue 2, points 1 and 2: data equality through the proxy for both RDB
// framings, with load during the initial syncs; the master sees one replica.
func TestRelayEndToEnd(t *testing.T) {
	for _, mode := range []struct{ name, diskless string }{{"diskless-eof-framing", "yes"}, {"disk-len-framing", "no"}} {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			m := redisproc.Start(t, append(masterArgs, "--repl-diskless-sync", mode.diskless)...)
			stopLoad := runLoad(t, m, 1)
			waitOps(t, m, 2000)
			r := &relay{master: m, proxy: startProxy(t, proxyConfig(t, m.Addr()))}
			r.addReplica(t)
			r.addReplica(t)
			waitOps(t, m, 5000)
			stopLoad()
			r.waitInSync(t)

			expectInt(t, "master connected_slaves", m.InfoInt("replication", "connected_slaves"), 1)
			expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 1)
			want := m.Info("replication")["master_replid"]
			for i, s := range r.replicas {
				if got := s.Info("replication")["master_replid"]; got != want {
					t.Fatalf("replica %d master_replid %s, master's %s", i, got, want)
				}
			}
			if d := m.Digest(); d == "" || d == "0000000000000000000000000000000000000000" {
				t.Fatalf("master digest %q: the load wrote nothing", d)
			}
		})
	}
}

// Issue 2, point 3: a restarted replica, and one that lost its link, come
// back with a partial resync through the proxy; nobody full-syncs.
func TestReplicaResyncsPartially(t *testing.T) {
	t.Parallel()
	r := startRelay(t, 1)
	rep := r.replicas[0]
	stopLoad := runLoad(t, r.master, 2)
	waitOps(t, r.master, 2000)
	stopLoad()
	r.waitInSync(t)
	proxyFull := r.proxy.infoInt("stats", "sync_full")
	masterFull := r.master.InfoInt("stats", "sync_full")

	if err := rep.Shutdown(true); err != nil {
		t.Fatal(err)
	}
	stopLoad = runLoad(t, r.master, 3)
	waitOps(t, r.master, 1000)
	rep.Restart(t)
	waitOps(t, r.master, 1000)
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "proxy sync_partial_ok after restart", r.proxy.infoInt("stats", "sync_partial_ok"), 1)

	if _, err := rep.Do("CLIENT", "KILL", "TYPE", "master"); err != nil {
		t.Fatal(err)
	}
	stopLoad = runLoad(t, r.master, 4)
	waitOps(t, r.master, 1000)
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "proxy sync_partial_ok after link loss", r.proxy.infoInt("stats", "sync_partial_ok"), 2)
	expectInt(t, "proxy sync_full", r.proxy.infoInt("stats", "sync_full"), proxyFull)
	expectInt(t, "master sync_full", r.master.InfoInt("stats", "sync_full"), masterFull)
}

// Issue 2, point 4: a new replica full-syncs from the proxy's snapshot; the
// master does not notice.
func TestNewReplicaFullSyncsFromSnapshot(t *testing.T) {
	t.Parallel()
	r := startRelay(t, 2)
	stopLoad := runLoad(t, r.master, 5)
	waitOps(t, r.master, 3000)
	waitCaughtUp(t, r.master, r.replicas...)
	masterFull := r.master.InfoInt("stats", "sync_full")
	proxyFull := r.proxy.infoInt("stats", "sync_full")
	r.addReplica(t)
	waitOps(t, r.master, 2000)
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "proxy sync_full", r.proxy.infoInt("stats", "sync_full"), proxyFull+1)
	expectInt(t, "master sync_full", r.master.InfoInt("stats", "sync_full"), masterFull)
	expectInt(t, "master connected_slaves", r.master.InfoInt("replication", "connected_slaves"), 1)
}

// Issue 2, point 5: a replica of the master moves behind the proxy and back,
// partially both ways, because the proxy keeps the master's IDs and offsets.
func TestTransparentInsertion(t *testing.T) {
	t.Parallel()
	r := startRelay(t, 0)
	stopLoad := runLoad(t, r.master, 6)
	waitOps(t, r.master, 1000)
	direct := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(r.master.Port))
	waitOps(t, r.master, 2000)
	waitCaughtUp(t, r.master, direct)

	masterFull := r.master.InfoInt("stats", "sync_full")
	if err := direct.ReplicaOf("127.0.0.1", r.proxy.port); err != nil {
		t.Fatal(err)
	}
	waitOps(t, r.master, 2000)
	waitCaughtUp(t, r.master, direct)
	expectInt(t, "proxy sync_partial_ok", r.proxy.infoInt("stats", "sync_partial_ok"), 1)
	expectInt(t, "proxy sync_full", r.proxy.infoInt("stats", "sync_full"), 0)

	partialBefore := r.master.InfoInt("stats", "sync_partial_ok")
	if err := direct.ReplicaOf("127.0.0.1", r.master.Port); err != nil {
		t.Fatal(err)
	}
	waitOps(t, r.master, 2000)
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, r.master, direct)
	expectInt(t, "master sync_partial_ok", r.master.InfoInt("stats", "sync_partial_ok"), partialBefore+1)
	expectInt(t, "master sync_full", r.master.InfoInt("stats", "sync_full"), masterFull)
}

// Issue 2, point 6: the proxy restarts under write load, cleanly or by
// SIGKILL, and everything resumes partially: the master's only full sync is
// the proxy's first, and the restarted proxy serves no full sync.
func TestProxyRestartUnderLoad(t *testing.T) {
	for _, mode := range []string{"clean-stop", "kill-9"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			m := redisproc.Start(t, masterArgs...)
			tp := &testProxy{t: t, cfg: proxyConfig(t, m.Addr())}
			tp.logPath = tp.cfg.DataDir + ".log"
			tp.port = portOf(tp.cfg.Listen)
			t.Cleanup(func() {
				tp.stop()
				if t.Failed() {
					t.Logf("proxy log tail:\n%s", tail(tp.logPath, 40))
				}
			})
			restart := tp.start
			if mode == "kill-9" {
				tp.startProcess()
				restart = tp.startProcess
			} else {
				tp.start()
			}
			r := &relay{master: m, proxy: tp}
			r.addReplica(t)
			r.addReplica(t)
			stopLoad := runLoad(t, m, 7)
			waitOps(t, m, 3000)
			waitCaughtUp(t, m, r.replicas...)

			for i := 0; i < 2; i++ {
				if mode == "kill-9" {
					tp.kill9()
				} else {
					tp.stop()
				}
				waitOps(t, m, 500)
				restart()
				waitOps(t, m, 1000)
			}
			stopLoad()
			r.waitInSync(t)
			expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 1)
			if got := m.InfoInt("stats", "sync_partial_ok"); got < 2 {
				t.Fatalf("master sync_partial_ok = %d, want >= 2 (one per proxy restart)", got)
			}
			expectInt(t, "restarted proxy sync_full", tp.infoInt("stats", "sync_full"), 0)
			if got := tp.infoInt("stats", "sync_partial_ok"); got < 2 {
				t.Fatalf("restarted proxy sync_partial_ok = %d, want >= 2 (both replicas)", got)
			}
		})
	}
}

func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}
