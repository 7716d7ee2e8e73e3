//go:build compat

package proxy_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// Issue 26, points 1, 2 and 4: a Redis 7.4 master (RDB 12) under load feeds
// a Redis 7.2 replica (configured format) and a Valkey 8.0 replica (its
// REPLCONF version) from one conversion of the stored snapshot, at the
// snapshot's offset; both then resync partially after a restart and after
// a proxy kill -9, and end with the master's digest.
func TestCompatConvert74To72AndValkey8(t *testing.T) {
	t.Parallel()
	m := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"), masterArgs...)
	stopLoad := runLoad(t, m, 26)
	// The snapshot is taken when the proxy starts: it must already hold
	// every type, a stream with a consumer group, and a hash whose field
	// TTL is gone again (Redis 7.4 keeps its newer type: re-encoded).
	waitOps(t, m, 3000)
	for _, cmd := range [][]any{
		{"XADD", "conv:stream", "*", "a", "1", "b", ""}, {"XADD", "conv:stream", "*", "b", "2", "a", "1"},
		{"XGROUP", "CREATE", "conv:stream", "g", "0"}, {"XREADGROUP", "GROUP", "g", "c1", "COUNT", "1", "STREAMS", "conv:stream", ">"},
		{"HSET", "conv:persisted", "f", "v", "g", "w"}, {"HPEXPIRE", "conv:persisted", 3600000, "FIELDS", 1, "f"},
		{"HPERSIST", "conv:persisted", "FIELDS", 1, "f"},
		{"SADD", "conv:set", "x", "y", "z"}, {"ZADD", "conv:zset", "1.5", "m", "-2", "n"}, {"RPUSH", "conv:list", "p", "q"},
		{"SET", "conv:ttl", "v", "PX", 3600000},
	} {
		if _, err := m.Do(cmd...); err != nil {
			t.Fatalf("%v: %v", cmd, err)
		}
	}
	cfg := proxyConfig(t, m.Addr())
	cfg.Replicas.RDBFormat = "redis-7.2"
	cfg.Snapshot.MinInterval = proxy.Duration(time.Hour)
	tp := newProcessProxy(t, cfg)
	r := &relay{master: m, proxy: tp}
	waitOps(t, m, 300)
	old := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.2.6"), "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	vk := redisproc.StartBinary(t, redisproc.Built(t, "valkey-8.0.1"), "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	r.replicas = []*redisproc.Server{old, vk}
	waitCaughtUp(t, m, r.replicas...)
	expectInt(t, "proxy sync_full", tp.infoInt("stats", "sync_full"), 2)
	expectInt(t, "proxy rdb_conversions (one, shared)", tp.infoInt("stats", "rdb_conversions"), 1)
	log := tail(tp.logPath, 2000)
	if !strings.Contains(log, `"reencoded_keys":1,`) {
		t.Fatalf("the conversion did not re-encode exactly the one hash of the newer type")
	}
	for _, want := range []string{`"target":"redis-7.2"`, `"target":"valkey-8.0"`} {
		if !strings.Contains(log, want) || !strings.Contains(log, "serving the snapshot converted") {
			t.Fatalf("the proxy log does not show a converted snapshot served with %s", want)
		}
	}

	for _, rep := range r.replicas {
		if err := rep.Shutdown(true); err != nil {
			t.Fatal(err)
		}
		waitOps(t, m, 300)
		rep.Restart(t)
		waitCaughtUp(t, m, r.replicas...)
	}
	expectInt(t, "proxy sync_full after the restarts", tp.infoInt("stats", "sync_full"), 2)
	if n := tp.infoInt("stats", "sync_partial_ok"); n < 2 {
		t.Fatalf("the restarted replicas did not resync partially (sync_partial_ok %d)", n)
	}

	// A damaged conversion is not served: the next full sync converts again.
	corruptConverted(t, cfg.DataDir)
	third := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.2.6"), "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	r.replicas = append(r.replicas, third)
	waitCaughtUp(t, m, third)
	expectInt(t, "proxy rdb_conversions after the damage", tp.infoInt("stats", "rdb_conversions"), 2)
	if log := tail(tp.logPath, 2000); !strings.Contains(log, "converted snapshot damaged") {
		t.Fatalf("the proxy log does not report the damaged conversion")
	}

	// Proxy kill -9 under load: every replica comes back partially.
	tp.kill9()
	waitOps(t, m, 300)
	tp.startProcess()
	waitOps(t, m, 300)
	waitCaughtUp(t, m, r.replicas...)
	expectInt(t, "proxy sync_full after kill -9", tp.infoInt("stats", "sync_full"), 0)
	stopLoad()
	r.waitInSync(t)
	for _, rep := range r.replicas {
		if l := rep.LogTail(500); strings.Contains(l, "Can't handle RDB format") {
			t.Fatalf("replica %s refused the RDB: %s", rep.Addr(), l)
		}
	}
	t.Logf("master %s: db0 %s, offset %d, digest %s; replicas %s and %s in sync",
		serverVersion(m), m.Info("keyspace")["db0"], m.InfoInt("replication", "master_repl_offset"), m.Digest(),
		serverVersion(old), serverVersion(vk))
}

// Issue 26, point 3: a hash field TTL cannot be written for Redis 7.2. By
// default the 7.2 replica (named for the old fleet by its user) is
// refused with an error naming the key, while a 7.4 replica keeps
// streaming; with rdb_convert_lossy the loss is counted instead.
func TestCompatConvertRefusesHashFieldTTL(t *testing.T) {
	t.Parallel()
	for _, lossy := range []bool{false, true} {
		t.Run("lossy="+strconv.FormatBool(lossy), func(t *testing.T) { runHashFieldTTLCase(t, lossy) })
	}
}

func runHashFieldTTLCase(t *testing.T, lossy bool) {
	m := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"), masterArgs...)
	for i := 0; i < 50; i++ {
		if _, err := m.Do("SET", "plain"+strconv.Itoa(i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Do("HSET", "session:ttl", "a", "1", "b", "2"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Do("HPEXPIRE", "session:ttl", 3600000, "FIELDS", 1, "a"); err != nil {
		t.Fatal(err)
	}
	cfg := proxyConfig(t, m.Addr())
	cfg.Replicas.RDBConvertLossy = lossy
	cfg.Users = []proxy.UserConfig{
		{Name: "ops", Password: "ops-pw", Role: "admin"},
		{Name: "fleet-new", Password: "new-pw", Role: "replica"},
		{Name: "fleet-old", Password: "old-pw", Role: "replica", RDBFormat: "redis-7.2"},
	}
	tp := startProxy(t, cfg)
	port := strconv.Itoa(tp.port)
	fresh := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"),
		"--masteruser", "fleet-new", "--masterauth", "new-pw", "--replicaof", "127.0.0.1", port)
	waitCaughtUp(t, m, fresh)
	old := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.2.6"),
		"--masteruser", "fleet-old", "--masterauth", "old-pw", "--replicaof", "127.0.0.1", port)

	if !lossy {
		redisproc.Eventually(t, syncTimeout, "the 7.2 replica refused", func() (bool, string) {
			n := tp.infoInt("stats", "rdb_conversion_refusals")
			return n >= 1, strconv.FormatInt(n, 10)
		})
		// The other replica keeps streaming meanwhile.
		for i := 0; i < 20; i++ {
			if _, err := m.Do("SET", "after"+strconv.Itoa(i), "v"); err != nil {
				t.Fatal(err)
			}
		}
		redisproc.WaitInSync(t, syncTimeout, m, fresh)
		want := `key \"session:ttl\" (db 0) holds 1 hash field(s) with a TTL (HEXPIRE), which the converter cannot write for redis-7.2`
		if log := tail(tp.logPath, 500); !strings.Contains(log, want) {
			t.Fatalf("the proxy log does not name the key: want %s", want)
		}
		redisproc.Eventually(t, syncTimeout, "the 7.2 replica to log the refusal", func() (bool, string) {
			l := old.LogTail(200)
			return strings.Contains(l, "replproxy: no snapshot this replica can load") && strings.Contains(l, "session:ttl"), l
		})
		if st := old.Info("replication")["master_link_status"]; st == "up" {
			t.Fatalf("the 7.2 replica's link is %s after a refusal", st)
		}
		return
	}
	waitCaughtUp(t, m, old)
	expectInt(t, "rdb_conversion_lost_field_ttls", tp.infoInt("stats", "rdb_conversion_lost_field_ttls"), 1)
	if v, err := old.Do("HGET", "session:ttl", "a"); err != nil || v != "1" {
		t.Fatalf("HGET session:ttl a on the 7.2 replica: %v (%v): the field, not only its TTL, was lost", v, err)
	}
	if log := tail(tp.logPath, 500); !strings.Contains(log, `"lost_field_ttls":1`) {
		t.Fatalf("the proxy log does not count the lost field TTL")
	}
}

// Issue 26, point 2: a Valkey 8.0 master writes RDB 11, which Redis 7.2
// loads: a replica configured as redis-7.2 gets the stored snapshot byte
// for byte, with no conversion, and the stream as for any replica.
func TestCompatValkey8To72NeedsNoConversion(t *testing.T) {
	t.Parallel()
	m := redisproc.StartBinary(t, redisproc.Built(t, "valkey-8.0.1"), append(append([]string{}, masterArgs...),
		"--dual-channel-replication-enabled", "no")...)
	stopLoad := runLoad(t, m, 27)
	waitOps(t, m, 3000)
	cfg := proxyConfig(t, m.Addr())
	cfg.Replicas.RDBFormat = "redis-7.2"
	tp := startProxy(t, cfg)
	r := &relay{master: m, proxy: tp}
	old := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.2.6"), "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	r.replicas = []*redisproc.Server{old}
	waitCaughtUp(t, m, old)
	if err := old.Shutdown(true); err != nil {
		t.Fatal(err)
	}
	waitOps(t, m, 300)
	old.Restart(t)
	waitCaughtUp(t, m, old)
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "proxy sync_full", tp.infoInt("stats", "sync_full"), 1)
	expectInt(t, "proxy rdb_conversions", tp.infoInt("stats", "rdb_conversions"), 0)
	if n := tp.infoInt("stats", "sync_partial_ok"); n < 1 {
		t.Fatalf("the restarted replica did not resync partially (sync_partial_ok %d)", n)
	}
}

// corruptConverted flips a byte in the middle of each converted snapshot.
func corruptConverted(t *testing.T, dataDir string) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dataDir, "converted", "*.rdb"))
	if len(files) == 0 {
		t.Fatalf("no converted snapshot in %s", dataDir)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)/2] ^= 0xff
		if err := os.WriteFile(name, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// Issue 26: a Redis 7.4 master to Debian's Redis 7.0 (RDB 10): keys of the
// 7.2+ types are re-encoded (sets as listpacks), streams are written as
// RDB 10 streams, the rest is copied; then a partial resync after a
// restart, and equal digests.
func TestCompatConvert74To70(t *testing.T) {
	t.Parallel()
	m := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"), masterArgs...)
	stopLoad := runLoad(t, m, 28)
	waitOps(t, m, 3000)
	for _, cmd := range [][]any{
		{"SADD", "conv:set", "x", "y", "z"},
		{"XADD", "conv:stream", "*", "a", "1"}, {"XGROUP", "CREATE", "conv:stream", "g", "0"},
		{"XREADGROUP", "GROUP", "g", "c1", "COUNT", "1", "STREAMS", "conv:stream", ">"},
	} {
		if _, err := m.Do(cmd...); err != nil {
			t.Fatalf("%v: %v", cmd, err)
		}
	}
	cfg := proxyConfig(t, m.Addr())
	cfg.Replicas.RDBFormat = "redis-7.0"
	tp := startProxy(t, cfg)
	r := &relay{master: m, proxy: tp}
	old := redisproc.StartBinary(t, system(t), "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	r.replicas = []*redisproc.Server{old}
	waitCaughtUp(t, m, old)
	if err := old.Shutdown(true); err != nil {
		t.Fatal(err)
	}
	waitOps(t, m, 300)
	old.Restart(t)
	waitCaughtUp(t, m, old)
	stopLoad()
	// Redis 7.0 formats sorted-set scores with %.17g in DEBUG DIGEST, 7.2+
	// with the shortest form: equal data, different digests. So the digest
	// is compared key by key, and sorted sets by their parsed scores.
	redisproc.Eventually(t, syncTimeout, "the replica at the master's offset", func() (bool, string) {
		want := m.InfoInt("replication", "master_repl_offset")
		got := old.InfoInt("replication", "slave_repl_offset")
		return got == want, fmt.Sprintf("%d of %d", got, want)
	})
	checkSameData(t, m, old, 3)
	expectInt(t, "proxy sync_full", tp.infoInt("stats", "sync_full"), 1)
	expectInt(t, "proxy rdb_conversions", tp.infoInt("stats", "rdb_conversions"), 1)
	if n := tp.infoInt("stats", "sync_partial_ok"); n < 1 {
		t.Fatalf("the restarted replica did not resync partially (sync_partial_ok %d)", n)
	}
	t.Logf("master %s, replica %s: digest %s", serverVersion(m), serverVersion(old), m.Digest())
}

// checkSameData compares every key of dbs databases: DEBUG DIGEST-VALUE,
// or for sorted sets the members and parsed scores.
func checkSameData(t *testing.T, m, rep *redisproc.Server, dbs int) {
	t.Helper()
	for db := 0; db < dbs; db++ {
		for _, s := range []*redisproc.Server{m, rep} {
			if _, err := s.Do("SELECT", db); err != nil {
				t.Fatal(err)
			}
		}
		// Before KEYS, which expires keys on the master only.
		a, _ := m.Do("DBSIZE")
		b, _ := rep.Do("DBSIZE")
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Fatalf("db%d: master has %v keys, replica %v", db, a, b)
		}
		keys, err := m.Do("KEYS", "*")
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys.([]any) {
			// A key about to expire may be gone from one side when read.
			ttl, _ := m.Do("PTTL", k)
			if ms, _ := strconv.ParseInt(fmt.Sprint(ttl), 10, 64); ms == -2 || ms >= 0 && ms < 60000 {
				continue
			}
			ty, _ := m.Do("TYPE", k)
			cmd := []any{"DEBUG", "DIGEST-VALUE", k}
			if ty == "zset" {
				cmd = []any{"ZRANGE", k, 0, -1, "WITHSCORES"}
			}
			a, errA := m.Do(cmd...)
			b, errB := rep.Do(cmd...)
			if errA != nil || errB != nil {
				t.Fatalf("db%d %v: %v / %v", db, cmd, errA, errB)
			}
			if ty == "zset" {
				a, b = parsedScores(a), parsedScores(b)
			}
			if fmt.Sprint(a) != fmt.Sprint(b) {
				t.Fatalf("db%d key %v (%v) differs: master %.200v, replica %.200v", db, k, ty, a, b)
			}
		}
	}
}

func parsedScores(v any) []any {
	items, _ := v.([]any)
	out := make([]any, len(items))
	for i, it := range items {
		out[i] = it
		if i%2 == 1 {
			f, _ := strconv.ParseFloat(fmt.Sprint(it), 64)
			out[i] = f
		}
	}
	return out
}
