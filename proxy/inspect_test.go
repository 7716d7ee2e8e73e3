package proxy_test

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

func runBinary(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(binary, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("replproxy %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Point 4: status reads a running proxy, and inspect reads its data dir
// after a kill -9: the snapshot's keys by DB and type, the biggest key, a
// memory estimate, and the backlog's offsets with the times of its bytes.
func TestStatusAndInspectOnARealRun(t *testing.T) {
	m := redisproc.Start(t, masterArgs...)
	// A known keyspace at the time of the proxy's full sync.
	if _, err := m.Do("DEBUG", "POPULATE", "500", "key", "50"); err != nil {
		t.Fatal(err)
	}
	db1 := m.ClientDB(1)
	ctx := t.Context()
	db1.HSet(ctx, "h", "f1", "v1", "f2", "v2")
	db1.RPush(ctx, "l", "a", "b", "c")
	db1.SAdd(ctx, "s", "x", "y")
	db1.Do(ctx, "ZADD", "z", "1", "one")
	m.ClientDB(2).Set(ctx, "big", strings.Repeat("x", 1<<20), 0)

	cfg := proxyConfig(t, m.Addr())
	tp := newProcessProxy(t, cfg)
	started := time.Now()
	rep := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	redisproc.WaitInSync(t, syncTimeout, m, rep)
	stopLoad := runLoad(t, m, 41)
	time.Sleep(2500 * time.Millisecond)

	out := runBinary(t, "status", "--addr", cfg.Listen)
	t.Logf("replproxy status:\n%s", out)
	for _, want := range []string{
		"ready: upstream link up", "upstream   " + m.Addr() + ", link up", "syncs: 1 full, 0 partial",
		"backlog    offsets [1, ", "oldest byte ", "snapshot   offset 0, ", "replicas   1",
		"damaged/ 0 B of 256.0 MiB",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q", want)
		}
	}
	if !regexp.MustCompile(`\n  127\.0\.0\.1:` + strconv.Itoa(rep.Port) + ` +online +lag `).MatchString(out) {
		t.Errorf("status does not show the replica online with its lag")
	}
	watch := exec.Command(binary, "status", "--watch", "--addr", cfg.Listen)
	var screen strings.Builder
	watch.Stdout = &screen
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond)
	watch.Process.Signal(syscall.SIGINT)
	if err := watch.Wait(); err != nil {
		t.Fatalf("status --watch: %v", err)
	}
	if frames := strings.Count(screen.String(), "\x1b[2J"); frames < 2 || strings.Count(screen.String(), "replicas   1") != frames {
		t.Fatalf("status --watch drew %d frames in 2.5s:\n%s", frames, screen.String())
	}

	stopLoad()
	time.Sleep(1500 * time.Millisecond)
	last := tp.infoInt("replication", "master_repl_offset")
	tp.kill9()
	text := runBinary(t, "inspect", "--data-dir", cfg.DataDir)
	t.Logf("replproxy inspect:\n%s", text)
	var rp proxy.InspectReport
	if err := json.Unmarshal([]byte(runBinary(t, "inspect", "--json", "--data-dir", cfg.DataDir)), &rp); err != nil {
		t.Fatal(err)
	}
	checkInspectedSnapshot(t, rp.Snapshot)
	b := rp.Backlog
	if b.FirstOffset != 1 || b.EndOffset-1 < last || b.Bytes != b.EndOffset-1 {
		t.Errorf("backlog offsets [%d, %d), %d bytes; the proxy was at %d", b.FirstOffset, b.EndOffset, b.Bytes, last)
	}
	if b.FirstByteTime == nil || b.LastByteTime == nil {
		t.Fatalf("backlog times missing after kill -9: %+v", b)
	}
	if b.FirstByteTime.Before(started.Add(-time.Second)) || b.LastByteTime.Sub(*b.FirstByteTime) < 2*time.Second || b.LastByteTime.After(time.Now()) {
		t.Errorf("backlog times %s .. %s: want within the run (started %s) and spanning the load", b.FirstByteTime, b.LastByteTime, started)
	}
	for _, want := range []string{"RDB REDIS0010 (version 10), produced by redis 7.0.15 (64 bits)", "db1: 4 keys (hash 1, list 1, set 1, zset 1)", `"big"`, "first byte "} {
		if !strings.Contains(text, want) {
			t.Errorf("inspect lacks %q", want)
		}
	}
}

func checkInspectedSnapshot(t *testing.T, s *proxy.SnapshotReport) {
	t.Helper()
	if s == nil {
		t.Fatal("inspect found no snapshot")
	}
	if s.RDBVersion != 10 || s.Aux["redis-ver"] != "7.0.15" {
		t.Errorf("RDB version %d, redis-ver %q", s.RDBVersion, s.Aux["redis-ver"])
	}
	want := map[int]map[string]int64{0: {"string": 500}, 1: {"hash": 1, "list": 1, "set": 1, "zset": 1}, 2: {"string": 1}}
	if len(s.DBs) != len(want) {
		t.Fatalf("DBs %+v", s.DBs)
	}
	for _, db := range s.DBs {
		for typ, n := range want[db.DB] {
			if db.Types[typ] != n {
				t.Errorf("db%d has %d %s keys, want %d (%+v)", db.DB, db.Types[typ], typ, n, db.Types)
			}
		}
	}
	if s.Keys != 505 || len(s.Biggest) == 0 || s.Biggest[0].Key != "big" || s.Biggest[0].DB != 2 {
		t.Errorf("keys %d, biggest %+v", s.Keys, s.Biggest)
	}
	if s.MemoryBytes < 1<<20 || s.MemoryBytes > 8<<20 {
		t.Errorf("memory estimate %d for a 1 MiB key and 504 small ones", s.MemoryBytes)
	}
}
