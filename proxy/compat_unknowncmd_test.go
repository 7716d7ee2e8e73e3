//go:build compat

package proxy_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// Issue 26: the stream after a converted snapshot is relayed unchanged, so
// a Redis 7.2 replica behind a 7.4 master meets commands it does not know.
// Each is counted for that replica (INFO, metrics) and logged at its first
// occurrence; a 7.4 replica behind the same proxy counts none. The 7.2
// replica logs an error, skips the command and keeps streaming; a field
// expired by the master reaches it as HDEL.
func TestCompatUnknownCommandsCounted(t *testing.T) {
	t.Parallel()
	m := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"), masterArgs...)
	for i := 0; i < 20; i++ {
		if _, err := m.Do("SET", "plain"+strconv.Itoa(i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	cfg := proxyConfig(t, m.Addr())
	cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	cfg.Users = []proxy.UserConfig{
		{Name: "ops", Password: "ops-pw", Role: "admin"},
		{Name: "fleet-new", Password: "new-pw", Role: "replica"},
		{Name: "fleet-old", Password: "old-pw", Role: "replica", RDBFormat: "redis-7.2"},
	}
	tp := startProxy(t, cfg)
	port := strconv.Itoa(tp.port)
	fresh := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"),
		"--masteruser", "fleet-new", "--masterauth", "new-pw", "--replicaof", "127.0.0.1", port)
	old := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.2.6"),
		"--masteruser", "fleet-old", "--masterauth", "old-pw", "--replicaof", "127.0.0.1", port)
	waitCaughtUp(t, m, fresh, old)
	expectUnknown(t, tp, old, 0)
	expectUnknown(t, tp, fresh, 0)

	// Redis 7.4 propagates HEXPIRE as HPEXPIREAT.
	for _, cmd := range [][]any{
		{"HSET", "h", "a", "1", "b", "2"},
		{"HEXPIRE", "h", 3600, "FIELDS", 1, "a"},
		{"HPEXPIRE", "h", 300, "FIELDS", 1, "b"},
	} {
		if _, err := m.Do(cmd...); err != nil {
			t.Fatalf("%v: %v", cmd, err)
		}
	}
	// The master expires b and sends HDEL h b, which the 7.2 replica knows.
	redisproc.Eventually(t, syncTimeout, "field b to expire on the 7.2 replica", func() (bool, string) {
		v, err := old.Do("HEXISTS", "h", "b")
		return err == nil && v == int64(0), ""
	})
	waitCaughtUp(t, m, fresh, old)
	expectUnknown(t, tp, old, 2)
	expectUnknown(t, tp, fresh, 0)
	if got := metricValue(t, cfg.MetricsListen, `replproxy_replica_unknown_commands_total{replica="`+old.Addr()+`"}`); got != "2" {
		t.Fatalf("metric for the 7.2 replica: %q, want 2", got)
	}
	if got := metricValue(t, cfg.MetricsListen, `replproxy_replica_unknown_commands_total{replica="`+fresh.Addr()+`"}`); got != "0" {
		t.Fatalf("metric for the 7.4 replica: %q, want 0", got)
	}
	// One line at the first HPEXPIREAT, naming it; the second is counted.
	log := tail(tp.logPath, 500)
	if n := strings.Count(log, `"command":"HPEXPIREAT"`); n != 1 {
		t.Fatalf("%d log lines name HPEXPIREAT, want 1 (the first occurrence)", n)
	}
	if !strings.Contains(log, `"target":"redis-7.2"`) || !strings.Contains(log, "does not know") {
		t.Fatalf("the proxy log does not explain the unknown command")
	}
	// What the 7.2 replica makes of it: an error logged, the command
	// skipped, the link up and the master's offset; a won't expire there.
	redisproc.Eventually(t, syncTimeout, "the 7.2 replica to log the unknown command", func() (bool, string) {
		l := old.LogTail(100)
		return strings.Contains(l, "unknown command 'HPEXPIREAT'"), l
	})
	if n := old.InfoInt("stats", "unexpected_error_replies"); n != 2 {
		t.Fatalf("the 7.2 replica counts %d unexpected_error_replies, want 2", n)
	}
	if v, err := fresh.Do("HTTL", "h", "FIELDS", 1, "a"); err != nil || !positiveFirst(v) {
		t.Fatalf("HTTL on the 7.4 replica: %v (%v), want a TTL", v, err)
	}
	if v, err := old.Do("HGET", "h", "a"); err != nil || v != "1" {
		t.Fatalf("HGET h a on the 7.2 replica: %v (%v)", v, err)
	}

	// Without TTLs left on the master, the data is the same everywhere.
	if _, err := m.Do("HPERSIST", "h", "FIELDS", 1, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Do("SET", "after", "v"); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, m, fresh, old)
	expectUnknown(t, tp, old, 3)
	redisproc.WaitInSync(t, syncTimeout, m, fresh, old)
	if old.Info("replication")["master_link_status"] != "up" {
		t.Fatal("the 7.2 replica's link went down")
	}
	expectInt(t, "proxy sync_full", tp.infoInt("stats", "sync_full"), 2)
}

// expectUnknown checks the replica's unknown_commands in INFO proxy's line
// for it, and in INFO replication's when its stream is scanned.
func expectUnknown(t *testing.T, tp *testProxy, rep *redisproc.Server, want int) {
	t.Helper()
	redisproc.Eventually(t, 10*time.Second, "unknown_commands of "+rep.Addr(), func() (bool, string) {
		for _, v := range tp.info("proxy") {
			if strings.HasPrefix(v, "addr="+rep.Addr()+",") {
				return strings.Contains(v, ",unknown_commands="+strconv.Itoa(want)), v
			}
		}
		return false, "no line"
	})
	_, repPort, _ := strings.Cut(rep.Addr(), ":")
	for k, v := range tp.info("replication") {
		if !strings.HasPrefix(k, "slave") || !strings.Contains(v, ",port="+repPort+",") {
			continue
		}
		scanned := strings.Contains(v, ",unknown_commands=")
		if want > 0 && !strings.Contains(v, ",unknown_commands="+strconv.Itoa(want)) {
			t.Fatalf("INFO replication %s: %s, want unknown_commands=%d", k, v, want)
		}
		if strings.Contains(rep.Info("server")["redis_version"], "7.4") && scanned {
			t.Fatalf("the stream of a replica of the master's version is scanned: %s", v)
		}
	}
}

func metricValue(t *testing.T, addr, series string) string {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return "(absent)"
}

func positiveFirst(v any) bool {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return false
	}
	n, ok := a[0].(int64)
	return ok && n > 0
}
