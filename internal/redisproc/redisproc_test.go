package redisproc

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	syncTimeout = 15 * time.Second
	emptyDigest = "0000000000000000000000000000000000000000"
)

func startReplica(t *testing.T, master *Server) *Server {
	t.Helper()
	return Start(t, "--replicaof", master.Host, strconv.Itoa(master.Port))
}

func waitLinkUp(t *testing.T, replicas ...*Server) {
	t.Helper()
	for _, r := range replicas {
		Eventually(t, syncTimeout, "replication link of "+r.Addr(), func() (bool, string) {
			st := r.Info("replication")["master_link_status"]
			return st == "up", "master_link_status=" + st
		})
	}
}

// runLoad writes to master for d and fails the test on any unexpected error.
func runLoad(t *testing.T, master *Server, d time.Duration, opt LoadOptions) {
	t.Helper()
	load := StartLoad(context.Background(), master, opt)
	time.Sleep(d) // the load itself is what we wait for
	// A loaded machine may make fewer writes in d; the tests want enough
	// writes, not a write rate.
	for deadline := time.Now().Add(30 * time.Second); load.Ops() < 100 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	ops, err := load.Stop()
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if ops < 100 {
		t.Fatalf("load did only %d ops in %s and 30 s more", ops, d)
	}
	t.Logf("load: %d ops, %d dropped in %s", ops, load.Dropped(), d)
}

func TestLoadReplicatesEveryType(t *testing.T) {
	master := Start(t)
	r1, r2 := startReplica(t, master), startReplica(t, master)
	waitLinkUp(t, r1, r2)

	runLoad(t, master, 3*time.Second, LoadOptions{DBs: 3, Seed: 1})
	start := time.Now()
	WaitInSync(t, syncTimeout, master, r1, r2)
	t.Logf("in sync %s after the load stopped", time.Since(start).Round(time.Millisecond))

	if d := master.Digest(); d == emptyDigest || d == "" {
		t.Fatalf("master digest %q: the load wrote nothing", d)
	}
	keyspace := r1.Info("keyspace")
	for db := range 3 {
		stats := keyspace[fmt.Sprintf("db%d", db)]
		if !strings.HasPrefix(stats, "keys=") || strings.HasPrefix(stats, "keys=0,") {
			t.Errorf("replica db%d: %q, want keys", db, stats)
		}
		if strings.Contains(stats, "expires=0,") {
			t.Errorf("replica db%d: %q, want keys with a TTL", db, stats)
		}
	}
	want := []string{"string", "list", "set", "hash", "zset", "stream"}
	for db := range 3 {
		got := keyTypes(t, r2, db)
		for _, typ := range want {
			if got[typ] == 0 {
				t.Errorf("replica db%d has no %s key (types: %v)", db, typ, got)
			}
		}
	}
	checkCommandStats(t, master)
}

// checkCommandStats asserts that the load sent every command it is meant
// to, and that the master rejected none of them.
func checkCommandStats(t *testing.T, master *Server) {
	t.Helper()
	stats := master.Info("commandstats")
	for _, cmd := range []string{
		"set", "incr", "append", "setrange", "getset", "setbit", "pfadd",
		"lpush", "rpush", "ltrim", "lpop", "sadd", "srem", "hset", "hdel", "hincrby",
		"zadd", "zincrby", "zrem", "xadd", "xgroup|create", "xreadgroup", "xack",
		"pexpire", "multi", "exec", "eval", "del", "unlink",
	} {
		if s, ok := stats["cmdstat_"+cmd]; !ok || strings.HasPrefix(s, "calls=0,") {
			t.Errorf("load never sent %s", strings.ToUpper(cmd))
		}
	}
	for name, s := range stats {
		if !strings.Contains(s, "rejected_calls=0,failed_calls=0") {
			t.Errorf("%s: %s", name, s)
		}
	}
}

// keyTypes counts the keys of db by TYPE.
func keyTypes(t *testing.T, s *Server, db int) map[string]int {
	t.Helper()
	c := s.ClientDB(db)
	ctx := context.Background()
	counts := make(map[string]int)
	iter := c.Scan(ctx, 0, "*", 500).Iterator()
	for iter.Next(ctx) {
		typ, err := c.Type(ctx, iter.Val()).Result()
		if err != nil {
			t.Fatalf("TYPE %q: %v", iter.Val(), err)
		}
		counts[typ]++
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("SCAN db%d: %v", db, err)
	}
	return counts
}

func TestReplicaRestartResyncsPartially(t *testing.T) {
	master := Start(t)
	replica := startReplica(t, master)
	waitLinkUp(t, replica)
	runLoad(t, master, 500*time.Millisecond, LoadOptions{DBs: 2, Seed: 2})
	WaitInSync(t, syncTimeout, master, replica)

	fullBefore := master.InfoInt("stats", "sync_full")
	partialBefore := master.InfoInt("stats", "sync_partial_ok")
	if err := replica.Shutdown(true); err != nil {
		t.Fatal(err)
	}
	// Something for the partial resync to carry.
	if _, err := master.Do("SET", "written-while-down", "x"); err != nil {
		t.Fatal(err)
	}
	replica.Restart(t)
	WaitInSync(t, syncTimeout, master, replica)

	if got := master.InfoInt("stats", "sync_partial_ok"); got <= partialBefore {
		t.Errorf("sync_partial_ok = %d, want > %d", got, partialBefore)
	}
	if got := master.InfoInt("stats", "sync_full"); got != fullBefore {
		t.Errorf("sync_full = %d, want %d (restart caused a full resync)", got, fullBefore)
	}
}

// The load must treat a killed and restarted master as dropped operations,
// not as errors, and pick up again once the master is back.
func TestLoadSurvivesMasterRestart(t *testing.T) {
	master := Start(t)
	load := StartLoad(context.Background(), master, LoadOptions{DBs: 2, Rate: 2000, Seed: 3})
	Eventually(t, 5*time.Second, "load to start", func() (bool, string) {
		return load.Ops() > 50, fmt.Sprintf("%d ops", load.Ops())
	})
	master.Kill()
	time.Sleep(200 * time.Millisecond) // let the load hit the dead master
	master.Restart(t)
	before := load.Ops()
	Eventually(t, 10*time.Second, "load to resume", func() (bool, string) {
		return load.Ops() > before+50, fmt.Sprintf("%d ops", load.Ops())
	})
	if _, err := load.Stop(); err != nil {
		t.Fatalf("load: %v", err)
	}
	if load.Dropped() == 0 {
		t.Errorf("no operation was dropped while the master was down")
	}
}

func TestPauseResume(t *testing.T) {
	s := Start(t)
	s.Pause()
	if _, err := s.raw(200*time.Millisecond, "PING"); err == nil {
		t.Fatal("paused server answered PING")
	}
	s.Resume()
	if _, err := s.Do("PING"); err != nil {
		t.Fatalf("PING after resume: %v", err)
	}
	if s.PID() <= 0 {
		t.Fatalf("PID = %d", s.PID())
	}
}

func TestParseInfo(t *testing.T) {
	got := parseInfo("# Replication\r\nrole:master\r\nmaster_repl_offset:42\r\n\r\n# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n")
	want := map[string]string{"role": "master", "master_repl_offset": "42", "db0": "keys=1,expires=0,avg_ttl=0"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
}

// fatalRecorder captures Fatalf instead of ending the test, to check what a
// failing wait reports.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
}

func TestWaitInSyncReportsEveryServer(t *testing.T) {
	master, stranger := Start(t), Start(t)
	if _, err := master.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	rec := &fatalRecorder{TB: t}
	WaitInSync(rec, 300*time.Millisecond, master, stranger)
	for _, want := range []string{master.Addr(), stranger.Addr(), "offset=", "digest=" + emptyDigest, "link=?"} {
		if !strings.Contains(rec.msg, want) {
			t.Errorf("report lacks %q:\n%s", want, rec.msg)
		}
	}
}
