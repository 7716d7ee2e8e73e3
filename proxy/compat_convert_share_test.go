//go:build compat

package proxy_test

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// dialTapAsync starts a raw replica's full sync and reads its RDB in the
// background; the channel gets the tap, or nil when the sync failed.
func dialTapAsync(addr, user, pass string, port int) <-chan *streamTap {
	ch := make(chan *streamTap, 1)
	go func() {
		tap, _ := dialTapNoFatal(addr, user, pass, port)
		ch <- tap
	}()
	return ch
}

// dialTapConn asks for a full sync and reads nothing.
func dialTapConn(t *testing.T, addr, user, pass string, port int) net.Conn {
	t.Helper()
	c, err := startTapSync(addr, user, pass, port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func convTemps(t *testing.T, dataDir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(backlog.Layout(dataDir).Converted(), "*"))
	return m
}

// Review of issue 26: two replicas that need the same conversion at once
// share one; one of them leaving does not stop it. A conversion every
// waiting replica left is stopped, leaves no file, and INFO returns to no
// conversion; the next replica converts anew. A proxy stopped during a
// conversion leaves no temp file once Run has returned.
func TestCompatConversionSharedAndAbandoned(t *testing.T) {
	t.Parallel()
	m := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"), append(append([]string{}, masterArgs...),
		"--rdbcompression", "no")...)
	if _, err := m.Do("DEBUG", "POPULATE", "60000", "key", "100"); err != nil {
		t.Fatal(err)
	}
	cfg := proxyConfig(t, m.Addr())
	cfg.Replicas.RDBConvertRate = 2 << 20 // about 4 s for the ~8 MB snapshot
	cfg.Users = []proxy.UserConfig{
		{Name: "ops", Password: "ops-pw", Role: "admin"},
		{Name: "r72", Password: "pw", Role: "replica", RDBFormat: "redis-7.2"},
		{Name: "r70", Password: "pw", Role: "replica", RDBFormat: "redis-7.0"},
	}
	tp := startProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's snapshot", func() (bool, string) {
		return tp.infoInt("backlog", "snapshot_bytes") > 0, ""
	})
	addr := "127.0.0.1:" + strconv.Itoa(tp.port)
	converting := func(min int64) func() (bool, string) {
		return func() (bool, string) {
			info := tp.info("stats")
			return info["rdb_conversions_in_progress"] == "1" && atoi(info["rdb_conversion_bytes_done"]) > min,
				info["rdb_conversion_bytes_done"]
		}
	}

	// Two at once, one leaves: one conversion, the other is served.
	a := dialTapConn(t, addr, "r72", "pw", 2001)
	b := dialTapAsync(addr, "r72", "pw", 2002)
	redisproc.Eventually(t, syncTimeout, "the conversion to run", converting(0))
	a.Close()
	tb := <-b
	if tb == nil {
		t.Fatal("the second replica's full sync failed after the first left")
	}
	if n := tp.infoInt("stats", "rdb_conversions"); n != 1 {
		t.Fatalf("rdb_conversions %d, want 1 shared conversion", n)
	}
	if n := strings.Count(tail(tp.logPath, 2000), "converting the snapshot for replicas"); n != 1 {
		t.Fatalf("%d conversions started, want 1", n)
	}
	tb.conn.Close()

	// Every waiter leaves: stopped, no file, INFO idle.
	c := dialTapConn(t, addr, "r70", "pw", 2003)
	redisproc.Eventually(t, syncTimeout, "the redis-7.0 conversion to run", converting(1<<20))
	c.Close()
	redisproc.Eventually(t, 10*time.Second, "the abandoned conversion to stop", func() (bool, string) {
		info := tp.info("stats")
		files := convTemps(t, cfg.DataDir)
		return info["rdb_conversions_in_progress"] == "0" && info["rdb_conversion_bytes_done"] == "0" && len(files) == 1,
			strings.Join(files, " ")
	})
	if n := tp.infoInt("stats", "rdb_conversions"); n != 1 {
		t.Fatalf("rdb_conversions %d after an abandoned one, want 1", n)
	}

	// The proxy stops during a conversion: nothing half written is left.
	d := dialTapConn(t, addr, "r70", "pw", 2004)
	defer d.Close()
	redisproc.Eventually(t, syncTimeout, "the next redis-7.0 conversion to run", converting(1<<20))
	tp.stop()
	for _, f := range convTemps(t, cfg.DataDir) {
		if strings.Contains(filepath.Base(f), "converting-") {
			t.Fatalf("%s is left once the proxy has stopped", f)
		}
	}
}

// Review of issue 26: a replica waiting for the conversion of a snapshot
// that a newer one replaces (another replica asked for the newer one) is
// not refused as if the snapshot could not be converted for it, nor paced,
// nor counted among the refusals: it is let go to sync again, from the
// newer snapshot.
func TestCompatConversionOfReplacedSnapshotIsNoRefusal(t *testing.T) {
	t.Parallel()
	m := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"), append(append([]string{}, masterArgs...),
		"--rdbcompression", "no")...)
	if _, err := m.Do("DEBUG", "POPULATE", "60000", "key", "100"); err != nil {
		t.Fatal(err)
	}
	cfg := proxyConfig(t, m.Addr())
	cfg.Replicas.RDBConvertRate = 64 << 10 // minutes for the ~8 MB snapshot
	cfg.Snapshot.RefreshAfter = 1 << 20
	cfg.Snapshot.MinInterval = proxy.Duration(time.Hour) // one refresh
	cfg.Users = []proxy.UserConfig{
		{Name: "ops", Password: "ops-pw", Role: "admin"},
		{Name: "r72", Password: "pw", Role: "replica", RDBFormat: "redis-7.2"},
	}
	tp := startProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's snapshot", func() (bool, string) {
		return tp.infoInt("backlog", "snapshot_bytes") > 0, ""
	})
	first := tp.infoInt("backlog", "snapshot_offset")
	addr := "127.0.0.1:" + strconv.Itoa(tp.port)
	a := dialTapAsync(addr, "r72", "pw", 3001)
	redisproc.Eventually(t, syncTimeout, "the first conversion to run", func() (bool, string) {
		return tp.infoInt("stats", "rdb_conversions_in_progress") == 1, ""
	})
	val := strings.Repeat("v", 64<<10)
	for i := 0; i < 40; i++ {
		if _, err := m.Do("SET", "fill"+strconv.Itoa(i), val); err != nil {
			t.Fatal(err)
		}
	}
	redisproc.Eventually(t, syncTimeout, "a newer snapshot", func() (bool, string) {
		return tp.infoInt("backlog", "snapshot_offset") > first, ""
	})
	b := dialTapConn(t, addr, "r72", "pw", 3002)
	defer b.Close()
	if tap := <-a; tap != nil {
		t.Fatal("the first replica was served the conversion of a replaced snapshot")
	}
	if n := tp.infoInt("stats", "rdb_conversion_refusals"); n != 0 {
		t.Fatalf("rdb_conversion_refusals %d: a replaced snapshot counted as one the replica cannot load", n)
	}
	if log := tail(tp.logPath, 500); strings.Contains(log, "full sync refused") {
		t.Fatalf("the replica of the replaced snapshot was refused and paced:\n%s", log)
	}
}
