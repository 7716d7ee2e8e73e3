//go:build compat

package proxy_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// Review of issue 26: the watch was decided from the stored snapshot's
// header alone. After a failover from a Redis 7.2 master to a promoted 7.4
// replica, a redis-7.2 replica resyncs partially, the snapshot still names
// 7.2, and the commands 7.2 does not know that the new master sends went
// uncounted. A snapshot of an older replication ID now leaves the master's
// version unknown, so they are counted.
func TestCompatWatchAfterFailoverToNewerMaster(t *testing.T) {
	t.Parallel()
	m := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.2.6"), masterArgs...)
	newer := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"), append(append([]string{}, masterArgs...),
		"--replicaof", "127.0.0.1", strconv.Itoa(m.Port))...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Users = []proxy.UserConfig{
		{Name: "ops", Password: "ops-pw", Role: "admin"},
		{Name: "fleet-old", Password: "old-pw", Role: "replica", RDBFormat: "redis-7.2"},
	}
	tp := startProxy(t, cfg)
	addr := "127.0.0.1:" + strconv.Itoa(tp.port)
	redisproc.Eventually(t, syncTimeout, "the proxy's snapshot", func() (bool, string) {
		return tp.infoInt("backlog", "snapshot_bytes") > 0, ""
	})
	old := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.2.6"),
		"--masteruser", "fleet-old", "--masterauth", "old-pw", "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	ctx := context.Background()
	if _, err := m.Do("SET", "before", "v"); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, m, newer, old)

	// Failover: promote the 7.4 replica, repoint the proxy at it.
	if _, err := newer.Do("REPLICAOF", "NO", "ONE"); err != nil {
		t.Fatal(err)
	}
	admin := redis.NewClient(&redis.Options{Addr: addr, Username: "ops", Password: "ops-pw"})
	defer admin.Close()
	if err := admin.Do(ctx, "REPLICAOF", "127.0.0.1", strconv.Itoa(newer.Port)).Err(); err != nil {
		t.Fatal(err)
	}
	redisproc.Eventually(t, syncTimeout, "the proxy to follow the promoted 7.4", func() (bool, string) {
		info := tp.info("replication")
		return info["master_port"] == strconv.Itoa(newer.Port) && info["master_link_status"] == "up", info["master_port"]
	})
	for _, cmd := range [][]any{{"HSET", "h", "a", "1"}, {"HPEXPIRE", "h", 3600000, "FIELDS", 1, "a"}} {
		if _, err := newer.Do(cmd...); err != nil {
			t.Fatal(err)
		}
	}
	waitCaughtUp(t, newer, old)
	if n := tp.infoInt("stats", "sync_full"); n != 1 {
		t.Fatalf("proxy sync_full %d: the 7.2 replica was to resync partially", n)
	}
	expectUnknown(t, tp, old, 1)
}
