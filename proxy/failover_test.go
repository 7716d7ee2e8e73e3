package proxy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// failoverRig is issue 24's topology: two promotable Redis servers (one
// master, one replica), a plain replica that is never promoted (the
// comparison: it is moved at a failover as the proxy is), the proxy, and
// two replicas of the proxy.
type failoverRig struct {
	nodes     [2]*redisproc.Server // the master and the replica that take turns
	plain     *redisproc.Server    // replica-priority 0, like the proxy
	proxy     *testProxy
	replicas  []*redisproc.Server
	sentinels []string
	// chained: no Sentinel moves the plain replica or the proxy; they stay
	// on the first node, which becomes a replica itself (FAILOVER command).
	chained bool
}

// failoverTimeout bounds each wait of these tests: Sentinel converts a
// demoted master only 8 s after the switch, and the machine is shared.
const failoverTimeout = 120 * time.Second

func newFailoverRig(t *testing.T, withSentinels bool, nodeArgs ...string) *failoverRig {
	t.Helper()
	args := append(append([]string{}, masterArgs...), nodeArgs...)
	m := redisproc.Start(t, args...)
	s := redisproc.Start(t, append(args, "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))...)
	plain := redisproc.Start(t, "--replica-priority", "0", "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))
	rig := &failoverRig{nodes: [2]*redisproc.Server{m, s}, plain: plain, chained: !withSentinels}
	cfg := proxyConfig(t, m.Addr())
	if withSentinels {
		for i := 0; i < 3; i++ {
			rig.sentinels = append(rig.sentinels, startSentinel(t, m.Port))
		}
		cfg.Master.Addr = ""
		cfg.Master.Sentinel.Addrs = rig.sentinels
		cfg.Master.Sentinel.Name = "mymaster"
	}
	rig.proxy = startProxy(t, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the proxy's upstream story:\n%s", proxyStory(rig.proxy))
		}
	})
	for i := 0; i < 2; i++ {
		rig.replicas = append(rig.replicas, redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(rig.proxy.port)))
	}
	for _, sn := range rig.sentinels {
		redisproc.Eventually(t, failoverTimeout, "sentinels to know the three replicas and each other", func() (bool, string) {
			f := sentinelMaster(sn)
			return f["num-slaves"] == "3" && f["num-other-sentinels"] == "2", fmt.Sprint(f["num-slaves"], " ", f["num-other-sentinels"])
		})
	}
	return rig
}

// following waits until every replica (the other node, the plain one,
// the proxy and the proxy's replicas) follows master with its ID, and all
// hold the same data at the same offset.
func (rig *failoverRig) following(t *testing.T, master *redisproc.Server) {
	t.Helper()
	id := master.Info("replication")["master_replid"]
	direct := []*redisproc.Server{rig.other(master), rig.plain}
	upstream := master // of the plain replica and the proxy
	if rig.chained {
		upstream = rig.nodes[0]
	}
	redisproc.Eventually(t, failoverTimeout, "every replica to follow "+master.Addr(), func() (bool, string) {
		for _, s := range direct {
			want := upstream
			if s != rig.plain {
				want = master
			}
			if s == want {
				continue
			}
			info := s.Info("replication")
			if info["role"] != "slave" || info["master_port"] != strconv.Itoa(want.Port) || info["master_link_status"] != "up" {
				return false, s.Addr() + ": " + info["role"] + " of " + info["master_port"] + ", link " + info["master_link_status"]
			}
		}
		info := rig.proxy.info("replication")
		if info["master_port"] != strconv.Itoa(upstream.Port) || info["master_link_status"] != "up" || info["master_replid"] != id {
			return false, "proxy: master " + info["master_port"] + ", link " + info["master_link_status"] + ", replid " + info["master_replid"]
		}
		for _, s := range rig.replicas {
			if got := s.Info("replication")["master_replid"]; got != id {
				return false, s.Addr() + " replid " + got
			}
		}
		return true, ""
	})
	redisproc.WaitInSync(t, failoverTimeout, master, append(direct, rig.replicas...)...)
}

func (rig *failoverRig) other(n *redisproc.Server) *redisproc.Server {
	if n == rig.nodes[0] {
		return rig.nodes[1]
	}
	return rig.nodes[0]
}

// syncCounts is what one failover cost, per node.
type syncCounts struct {
	proxyFull, proxyPartial     int64 // the proxy's own resyncs, from its INFO
	servedFull, servedPartial   int64 // the proxy's replicas' resyncs, served by the proxy
	plainFull, plainPartial     int   // the plain replica's, from the nodes' logs
	demotedFull, demotedPartial int   // the old master's, once it is a replica
	// From the proxy's INFO: ms from Sentinel's +promoted-slave, and from
	// the first +switch-master, to the proxy's +CONTINUE.
	promotionToContinue, switchToContinue string
}

func (c syncCounts) String() string {
	return fmt.Sprintf("proxy full %d partial %d | proxy's replicas full %d partial %d | plain replica full %d partial %d | demoted master full %d partial %d | promotion→+CONTINUE %s ms, +switch-master→+CONTINUE %s ms",
		c.proxyFull, c.proxyPartial, c.servedFull, c.servedPartial, c.plainFull, c.plainPartial, c.demotedFull, c.demotedPartial,
		c.promotionToContinue, c.switchToContinue)
}

func (rig *failoverRig) proxyCounters() [4]int64 {
	st := rig.proxy.info("stats")
	var out [4]int64
	for i, k := range []string{"upstream_full_syncs", "upstream_partial_syncs", "sync_full", "sync_partial_ok"} {
		out[i], _ = strconv.ParseInt(st[k], 10, 64)
	}
	return out
}

var (
	asksLine       = regexp.MustCompile(`Replica 127\.0\.0\.1:(\d+) asks for synchronization`)
	partialOKLine  = regexp.MustCompile(`Partial resynchronization request from 127\.0\.0\.1:(\d+) accepted`)
	fullResyncLine = regexp.MustCompile(`Partial resynchronization not accepted|Full resync requested by replica|Unable to partial resync with replica`)
)

// servedSyncs counts, in the two nodes' logs, the full and partial syncs
// they served to the replica listening on port: each "asks for
// synchronization" is followed by its verdict.
func (rig *failoverRig) servedSyncs(port int) (full, partial int) {
	p := strconv.Itoa(port)
	for _, s := range rig.nodes {
		b, _ := os.ReadFile(filepath.Join(s.Dir, "redis.log"))
		asker := ""
		for _, line := range strings.Split(string(b), "\n") {
			if m := asksLine.FindStringSubmatch(line); m != nil {
				asker = m[1]
				continue
			}
			if asker != p {
				continue
			}
			if partialOKLine.MatchString(line) {
				partial++
				asker = ""
			} else if fullResyncLine.MatchString(line) {
				full++
				asker = ""
			}
		}
	}
	return full, partial
}

// measure runs one failover from old to its other node and returns what
// it cost each node.
func (rig *failoverRig) measure(t *testing.T, old *redisproc.Server, failover func()) syncCounts {
	t.Helper()
	next := rig.other(old)
	before := rig.proxyCounters()
	pf, pp := rig.servedSyncs(rig.plain.Port)
	df, dp := rig.servedSyncs(old.Port)
	failover()
	redisproc.Eventually(t, failoverTimeout, next.Addr()+" to be promoted", func() (bool, string) {
		role := next.Info("replication")["role"]
		return role == "master", role
	})
	rig.following(t, next)
	after := rig.proxyCounters()
	st := rig.proxy.info("stats")
	pf2, pp2 := rig.servedSyncs(rig.plain.Port)
	df2, dp2 := rig.servedSyncs(old.Port)
	return syncCounts{
		proxyFull: after[0] - before[0], proxyPartial: after[1] - before[1],
		servedFull: after[2] - before[2], servedPartial: after[3] - before[3],
		plainFull: pf2 - pf, plainPartial: pp2 - pp, demotedFull: df2 - df, demotedPartial: dp2 - dp,
		promotionToContinue: st["failover_last_promotion_to_continue_ms"], switchToContinue: st["failover_last_switch_master_to_continue_ms"],
	}
}

// writeSome writes n keys with no TTL, so no expiry reaches the stream later.
func writeSome(t *testing.T, m *redisproc.Server, round, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := m.Do("SET", fmt.Sprintf("round:%d:%d", round, i), strings.Repeat("v", 64)); err != nil {
			t.Fatal(err)
		}
	}
}

// checkPlannedFailovers asserts issue 24's goal over a run and logs the
// comparison with the plain replica.
func checkPlannedFailovers(t *testing.T, runs []syncCounts) {
	t.Helper()

	var plainFull, demotedFull int
	bad := 0
	for i, c := range runs {
		t.Logf("failover %2d: %s", i+1, c)
		plainFull += c.plainFull
		demotedFull += c.demotedFull
		if c.proxyFull != 0 || c.proxyPartial < 1 || c.servedFull != 0 || c.servedPartial < 2 {
			bad++
		}
	}
	t.Logf("plain Redis replica: %d full syncs in %d failovers; demoted master: %d full syncs", plainFull, len(runs), demotedFull)
	if bad > 0 {
		t.Fatalf("%d of %d failovers were not partial for the proxy and both of its replicas", bad, len(runs))
	}
}

// proxyStory is the proxy's log, cut to its upstream moves and syncs.
func proxyStory(tp *testProxy) string {
	b, _ := os.ReadFile(tp.logPath)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		for _, key := range []string{"PSYNC answered", "upstream master changed", "parked", "full sync from master", "aborted", "pause ended"} {
			if strings.Contains(line, key) {
				out = append(out, line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

// sentinelsAgree waits until every sentinel names master and sees the
// other node as its replica with the link up, by an INFO read since it was
// moved. Sentinel reads a replica's INFO every 10 s: failing over sooner
// lets a sentinel that still remembers the demoted master as a master
// "convert" it back after its promotion (+convert-to-slave), a race of
// Sentinel's own that these tests are not about.
func (rig *failoverRig) sentinelsAgree(t *testing.T, master *redisproc.Server) {
	t.Helper()
	other := rig.other(master)
	for _, sn := range rig.sentinels {
		redisproc.Eventually(t, failoverTimeout, "sentinel "+sn+" to agree on "+master.Addr(), func() (bool, string) {
			if f := sentinelMaster(sn); f["port"] != strconv.Itoa(master.Port) {
				return false, "names " + f["port"]
			}
			f := sentinelReplica(sn, other.Port)
			ok := f["role-reported"] == "slave" && f["master-port"] == strconv.Itoa(master.Port) &&
				f["master-link-status"] == "ok" && f["flags"] == "slave"
			return ok, fmt.Sprint(f["flags"], " ", f["role-reported"], " of ", f["master-port"], " link ", f["master-link-status"])
		})
	}
}

// sentinelReplica reads what a sentinel knows of the replica at port.
func sentinelReplica(sentinel string, port int) map[string]string {
	got, err := sentinelDo(sentinel, "SENTINEL", "REPLICAS", "mymaster")
	if err != nil {
		return nil
	}
	parts := strings.Split(got, "\n")
	for i := 0; i+1 < len(parts); i++ {
		if parts[i] != "port" || parts[i+1] != strconv.Itoa(port) {
			continue
		}
		// The entry's fields run from its "name" (a few before) to the next "name".
		start := i
		for start > 0 && parts[start] != "name" {
			start--
		}
		out := map[string]string{}
		for j := start; j+1 < len(parts); j += 2 {
			if j > start && parts[j] == "name" {
				break
			}
			out[parts[j]] = parts[j+1]
		}
		return out
	}
	return nil
}

// sentinelDo sends one command to a sentinel.
func sentinelDo(addr string, args ...string) (string, error) {
	w, err := dialWire(addr)
	if err != nil {
		return "", err
	}
	defer w.Close()
	return w.do(args...)
}

// Issue 24, point 1: ten SENTINEL FAILOVERs in a row, alternating between
// two nodes, with no write after the promotion: the proxy resyncs
// partially every time, and so do both of its replicas. The plain replica,
// moved by Sentinel at the same failovers, is the comparison.
func TestSentinelPlannedFailoversArePartial(t *testing.T) {
	t.Parallel()
	rig := newFailoverRig(t, true)
	cur := rig.nodes[0]
	rig.following(t, cur)
	var runs []syncCounts
	for i := 0; i < 10; i++ {
		writeSome(t, cur, i, 200) // the clients stop writing before the failover
		rig.following(t, cur)
		rig.sentinelsAgree(t, cur)
		sn := rig.sentinels[i%len(rig.sentinels)]
		c := rig.measure(t, cur, func() {
			redisproc.Eventually(t, failoverTimeout, "sentinel to accept SENTINEL FAILOVER", func() (bool, string) {
				got, err := sentinelDo(sn, "SENTINEL", "FAILOVER", "mymaster")
				return got == "+OK", fmt.Sprint(got, err)
			})
		})
		runs = append(runs, c)
		cur = rig.other(cur)
		for _, s := range rig.sentinels {
			if f := sentinelReplica(s, rig.proxy.port); f["slave-priority"] != "0" {
				t.Fatalf("sentinel %s lists the proxy as a replica of %s with priority %q", s, cur.Addr(), f["slave-priority"])
			}
		}
	}
	checkPlannedFailovers(t, runs)
	// Every promotion was followed from Sentinel's events, none by a poll.
	expectInt(t, "proxy failover_promotions_followed", rig.proxy.infoInt("stats", "failover_promotions_followed"), 10)
	if story := proxyStory(rig.proxy); strings.Contains(story, "(poll)") {
		t.Fatalf("a poll moved the proxy:\n%s", story)
	}
}

// Issue 24, point 2: the FAILOVER command, with no Sentinel: FAILOVER TO
// the other node, ten times, in both directions. The old master pauses
// writes, waits for its target, and becomes its replica; the proxy and the
// plain replica stay on the first node, which is master or replica in
// turn, and resync partially each time, as do the proxy's replicas.
func TestFailoverCommandIsPartial(t *testing.T) {
	t.Parallel()
	rig := newFailoverRig(t, false)
	cur := rig.nodes[0]
	rig.following(t, cur)
	var runs []syncCounts
	for i := 0; i < 10; i++ {
		writeSome(t, cur, i, 200)
		rig.following(t, cur)
		next := rig.other(cur)
		c := rig.measure(t, cur, func() {
			if got, err := cur.Do("FAILOVER", "TO", "127.0.0.1", next.Port, "TIMEOUT", 60000); err != nil || got != "OK" {
				t.Fatalf("FAILOVER TO %s: %v %v", next.Addr(), got, err)
			}
		})
		runs = append(runs, c)
		cur = next
	}
	checkPlannedFailovers(t, runs)
}

// FAILOVER with no TO picks any replica that has caught up, priority
// notwithstanding, so it may pick the proxy: the proxy refuses PSYNC
// FAILOVER, the master aborts and stays master (with a new ID, as Redis
// does), and the proxy and its replica follow it partially.
func TestFailoverCommandNeverPromotesTheProxy(t *testing.T) {
	t.Parallel()
	r := startRelay(t, 1)
	if _, err := r.master.Do("SET", "before", "1"); err != nil {
		t.Fatal(err)
	}
	r.waitInSync(t)
	if got, err := r.master.Do("FAILOVER"); err != nil || got != "OK" {
		t.Fatalf("FAILOVER: %v %v", got, err)
	}
	redisproc.Eventually(t, failoverTimeout, "the master to abort the failover", func() (bool, string) {
		info := r.master.Info("replication")
		return info["role"] == "master" && info["master_failover_state"] == "no-failover" &&
				strings.Contains(r.master.LogTail(200), "replproxy holds no data"),
			info["role"] + " " + info["master_failover_state"]
	})
	if _, err := r.master.Do("SET", "after", "2"); err != nil {
		t.Fatal(err)
	}
	r.waitInSync(t)
	expectInt(t, "proxy upstream_full_syncs", r.proxy.infoInt("stats", "upstream_full_syncs"), 1)
	expectInt(t, "proxy sync_full (the replica's first sync only)", r.proxy.infoInt("stats", "sync_full"), 1)
	if got := r.proxy.info("replication")["master_replid"]; got != r.master.Info("replication")["master_replid"] {
		t.Fatalf("proxy replid %s, master's %s", got, r.master.Info("replication")["master_replid"])
	}
}

// Issue 24, point 3: a SENTINEL FAILOVER while clients still write to the
// old master. Its last writes are lost, as in any failover, and a full
// sync is allowed; every node ends with the new master's data.
func TestSentinelFailoverWithWritesInFlight(t *testing.T) {
	t.Parallel()
	rig := newFailoverRig(t, true)
	cur, next := rig.nodes[0], rig.nodes[1]
	rig.following(t, cur)
	rig.sentinelsAgree(t, cur)
	stopLoad := runLoad(t, cur, 2401)
	waitOps(t, cur, 1000)
	redisproc.Eventually(t, failoverTimeout, "sentinel to accept SENTINEL FAILOVER", func() (bool, string) {
		got, err := sentinelDo(rig.sentinels[0], "SENTINEL", "FAILOVER", "mymaster")
		return got == "+OK", fmt.Sprint(got, err)
	})
	redisproc.Eventually(t, failoverTimeout, next.Addr()+" to be promoted", func() (bool, string) {
		role := next.Info("replication")["role"]
		return role == "master", role
	})
	waitOps(t, cur, 300) // writes go on reaching the old master after the promotion
	stopLoad()
	rig.following(t, next)
	t.Logf("proxy: %d full, %d partial upstream syncs in all", rig.proxy.infoInt("stats", "upstream_full_syncs"), rig.proxy.infoInt("stats", "upstream_partial_syncs"))
}

// Issue 24, point 4: a failover that Sentinel aborts after the proxy has
// stopped reading from the master. The promoted replica refuses SLAVEOF
// (renamed away), so the leader times out waiting for the promotion and
// publishes -failover-abort-slave-timeout; the proxy resumes from the old
// master with a partial resync, and the writes made meanwhile reach its
// replicas, byte for byte.
func TestSentinelFailoverAbortResumesPartially(t *testing.T) {
	t.Parallel()
	// Longer than the failover-timeout: the resume must come from the abort.
	testStalledFailoverResumes(t, 6*time.Second, 5*time.Minute, "-failover-abort-slave-timeout")
}

// The same failover, with a pause bound shorter than Sentinel's wait: the
// proxy resumes when its bound is reached, before the abort.
func TestFailoverPauseIsBounded(t *testing.T) {
	t.Parallel()
	testStalledFailoverResumes(t, 5*time.Minute, 2*time.Second, "pause bound reached")
}

// testStalledFailoverResumes runs a SENTINEL FAILOVER whose promotion never
// happens: the chosen replica has SLAVEOF renamed away, so the leader waits
// failoverTimeout, then aborts. The proxy, parked for at most pause, must
// resume from the old master partially, with the writes made meanwhile;
// its log must name why it resumed.
func testStalledFailoverResumes(t *testing.T, sentinelTimeout, pause time.Duration, resumedBy string) {
	m := redisproc.Start(t, masterArgs...)
	s := redisproc.Start(t, append(masterArgs, "--rename-command", "SLAVEOF", "", "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))...)
	var sentinels []string
	for i := 0; i < 3; i++ {
		sentinels = append(sentinels, startSentinel(t, m.Port, fmt.Sprintf("sentinel failover-timeout mymaster %d", sentinelTimeout.Milliseconds())))
	}
	cfg := proxyConfig(t, "")
	cfg.Master.Sentinel.Addrs = sentinels
	cfg.Master.Sentinel.Name = "mymaster"
	cfg.Master.Sentinel.FailoverPause = proxy.Duration(pause)
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	for _, sn := range sentinels {
		redisproc.Eventually(t, failoverTimeout, "sentinels to know both replicas and each other", func() (bool, string) {
			f := sentinelMaster(sn)
			return f["num-slaves"] == "2" && f["num-other-sentinels"] == "2", fmt.Sprint(f["num-slaves"], " ", f["num-other-sentinels"])
		})
	}
	if _, err := m.Do("SET", "before", "1"); err != nil {
		t.Fatal(err)
	}
	redisproc.WaitInSync(t, syncTimeout, m, append([]*redisproc.Server{s}, r.replicas...)...)
	redisproc.Eventually(t, failoverTimeout, "sentinel to accept SENTINEL FAILOVER", func() (bool, string) {
		got, err := sentinelDo(sentinels[0], "SENTINEL", "FAILOVER", "mymaster")
		return got == "+OK", fmt.Sprint(got, err)
	})
	redisproc.Eventually(t, failoverTimeout, "the proxy to stop reading from the master", func() (bool, string) {
		st := r.proxy.info("stats")
		return st["failover_pauses"] == "1", st["failover_pauses"]
	})
	writeSome(t, m, 0, 300) // while the proxy reads nothing
	redisproc.Eventually(t, failoverTimeout, "the proxy to resume", func() (bool, string) {
		info := r.proxy.info("replication")
		return info["master_link_status"] == "up", info["master_link_status"]
	})
	redisproc.WaitInSync(t, syncTimeout, m, r.replicas...)
	if got := m.Info("replication")["role"]; got != "master" {
		t.Fatalf("the old master is now %s", got)
	}
	expectInt(t, "proxy upstream_full_syncs", r.proxy.infoInt("stats", "upstream_full_syncs"), 1)
	expectInt(t, "proxy upstream_partial_syncs", r.proxy.infoInt("stats", "upstream_partial_syncs"), 1)
	expectInt(t, "proxy sync_full (the replica's first sync only)", r.proxy.infoInt("stats", "sync_full"), 1)
	if !strings.Contains(proxyStory(r.proxy), resumedBy) {
		t.Fatalf("the proxy's log does not say it resumed by %q:\n%s", resumedBy, proxyStory(r.proxy))
	}
}
