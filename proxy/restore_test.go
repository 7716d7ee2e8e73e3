package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hdt3213/rdb/model"
	"github.com/hdt3213/rdb/parser"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// quiesce stops nothing but waits for a master without load to settle: the
// load's short-lived keys (TTL up to 1.5 s) expire, a SCAN of every
// database makes the master delete them, so its digest no longer counts
// keys a later restore would find expired; then the proxy holds it all.
func quiesce(t *testing.T, m *redisproc.Server, tp *testProxy) (digest string, offset int64) {
	t.Helper()
	time.Sleep(1600 * time.Millisecond)
	ctx := context.Background()
	for db := range 3 {
		c := m.ClientDB(db)
		iter := c.Scan(ctx, 0, "*", 1000).Iterator()
		for iter.Next(ctx) {
		}
		if err := iter.Err(); err != nil {
			t.Fatal(err)
		}
	}
	offset = m.InfoInt("replication", "master_repl_offset")
	redisproc.Eventually(t, syncTimeout, "proxy to store the master's offset", func() (bool, string) {
		got := tp.infoInt("replication", "master_repl_offset")
		return got == offset, strconv.FormatInt(got, 10)
	})
	digest = m.Digest()
	if digest == "" || m.InfoInt("replication", "master_repl_offset") != offset {
		t.Fatalf("master moved while quiet")
	}
	return digest, offset
}

var digestLine = regexp.MustCompile(`(?m)^digest +([0-9a-f]{40})$`)

// restoreRDB runs replproxy restore and checks the digest it reports and
// the digest of a fresh redis-server loading its RDB.
func restoreRDB(t *testing.T, dataDir, want string, target ...string) string {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"restore", "--data-dir", dataDir, "--out", filepath.Join(dir, "dump.rdb")}, target...)
	out := runBinary(t, args...)
	progress := regexp.MustCompile(`(?m)^progress: .*\n`)
	t.Logf("replproxy %s:\n%s(%d progress lines)", strings.Join(target, " "), progress.ReplaceAllString(out, ""), len(progress.FindAllString(out, -1)))
	if m := digestLine.FindStringSubmatch(out); m == nil || m[1] != want {
		t.Fatalf("restore %v reports digest %v, want %s", target, m, want)
	}
	fresh := redisproc.Start(t, "--dir", dir, "--dbfilename", "dump.rdb")
	if got := fresh.Digest(); got != want {
		t.Fatalf("restore %v: a redis-server loading its RDB has digest %s, want %s", target, got, want)
	}
	return out
}

// Issue 15, points 1 to 5: under write load, record the digest, the offset
// and the time; FLUSHALL; write more. On the live proxy's data dir,
// restore --before FLUSHALL and --to-offset give the recorded digest, and
// replication is undisturbed; after kill -9, --to-time gives it too, from
// the time index the killed proxy left.
func TestRestoreUndoesAFlushall(t *testing.T) {
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	tp := newProcessProxy(t, cfg)
	rep := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	redisproc.WaitInSync(t, syncTimeout, m, rep)

	stopLoad := runLoad(t, m, 151)
	waitOps(t, m, 1500)
	stopLoad()
	digest, offset := quiesce(t, m, tp)
	// at is a second boundary after every byte up to offset, before
	// FLUSHALL. A PUBLISH (in the stream, no data) just before it makes
	// the FLUSHALL follow other bytes within the second: a time index
	// with a point per second of elapsed time, rather than per wall-clock
	// second, would have none for it and date it before at.
	at := time.Now().Truncate(time.Second).Add(3 * time.Second)
	time.Sleep(time.Until(at) - 300*time.Millisecond)
	if _, err := m.Do("PUBLISH", "restore-test", "ping"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(at) + 100*time.Millisecond)
	if _, err := m.Do("FLUSHALL"); err != nil {
		t.Fatal(err)
	}
	stopLoad = runLoad(t, m, 152)
	waitOps(t, m, 1000)
	fullMaster, partialMaster := m.InfoInt("stats", "sync_full"), m.InfoInt("stats", "sync_partial_ok")
	fullProxy, partialProxy := tp.infoInt("stats", "sync_full"), tp.infoInt("stats", "sync_partial_ok")

	// Point 1, and 5: beside the live proxy, under load.
	out := restoreRDB(t, cfg.DataDir, digest, "--before", "FLUSHALL", "--progress-interval", "1ms")
	for _, want := range []string{"snapshot   ", "at offset 0\n", "replayed   offsets 1..", ", reached exactly\n", `last command matching "FLUSHALL": FLUSHALL at offset`, "progress: replayed "} {
		if !strings.Contains(out, want) {
			t.Errorf("restore --before output lacks %q", want)
		}
	}
	// Point 2.
	restoreRDB(t, cfg.DataDir, digest, "--to-offset", strconv.FormatInt(offset, 10))
	// A target inside a command rounds down, and says so.
	out = restoreRDB(t, cfg.DataDir, digest, "--to-offset", strconv.FormatInt(offset+3, 10))
	if !strings.Contains(out, "rounded down to "+strconv.FormatInt(offset, 10)) {
		t.Errorf("restore --to-offset inside FLUSHALL does not say it rounded down to %d", offset)
	}

	// Point 5: replication went on, undisturbed.
	stopLoad()
	waitCaughtUp(t, m, rep)
	redisproc.Eventually(t, syncTimeout, "replica digest equal to the master's", func() (bool, string) {
		a, b := m.Digest(), rep.Digest()
		return a == b && a != "", a + " vs " + b
	})
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), fullMaster)
	expectInt(t, "master sync_partial_ok", m.InfoInt("stats", "sync_partial_ok"), partialMaster)
	expectInt(t, "proxy sync_full", tp.infoInt("stats", "sync_full"), fullProxy)
	expectInt(t, "proxy sync_partial_ok", tp.infoInt("stats", "sync_partial_ok"), partialProxy)

	// Points 3 and 4: the time index survives kill -9, and lands on the second.
	tp.kill9()
	out = restoreRDB(t, cfg.DataDir, digest, "--to-time", at.UTC().Format(time.RFC3339))
	if !strings.Contains(out, "target     offset ") {
		t.Errorf("restore --to-time output lacks its target")
	}
	// And the export of the same range, replayed on the snapshot's data,
	// gives the same state: it carries the SELECTs and drops PING/REPLCONF.
	exported := runBinaryStdout(t, "export", "--data-dir", cfg.DataDir, "--from", "1", "--to", strconv.FormatInt(offset, 10))
	if strings.Contains(exported, "REPLCONF") || strings.Contains(exported, "PING") || !strings.HasPrefix(exported, "*2\r\n$6\r\nSELECT\r\n") {
		t.Errorf("export: want a SELECT first and no PING or REPLCONF:\n%.200q", exported)
	}
	fresh := redisproc.Start(t)
	pipe(t, fresh, exported)
	if got := fresh.Digest(); got != digest {
		t.Fatalf("export replayed on an empty server (the snapshot at 0 was empty): digest %s, want %s", got, digest)
	}
}

// pipe sends raw RESP to a server, as redis-cli --pipe does, and waits
// until it has executed all of it.
func pipe(t *testing.T, s *redisproc.Server, raw string) {
	t.Helper()
	conn, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(raw + "*1\r\n$4\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	var got []byte
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for !bytes.HasSuffix(got, []byte("+PONG\r\n")) {
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("pipe: %v after %d bytes of replies", err, len(got))
		}
	}
}

// runBinaryStdout runs replproxy and returns its standard output alone.
func runBinaryStdout(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("replproxy %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	t.Logf("replproxy %s: %s", strings.Join(args, " "), stderr.String())
	return string(out)
}

var snapshotLine = regexp.MustCompile(`(?m)^snapshot +(\S+) at offset (\d+)$`)

// Issue 15, point 6: with snapshot.keep: 3, a target older than the newest
// snapshot is reached from an older kept one; without the history there
// would be no base before it.
func TestRestoreFromAnOlderKeptSnapshot(t *testing.T) {
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Snapshot.Keep = 3
	cfg.Snapshot.RefreshAfter = 1 // renew whenever the stream moved...
	cfg.Snapshot.MinInterval = proxy.Duration(2 * time.Second)
	tp := startProxy(t, cfg)
	refreshes := func() int64 { return tp.infoInt("stats", "snapshot_refreshes") }
	stopLoad := runLoad(t, m, 161)
	redisproc.Eventually(t, syncTimeout, "a first snapshot refresh", func() (bool, string) {
		return refreshes() >= 1, ""
	})
	stopLoad()
	digest, offset := quiesce(t, m, tp)

	stopLoad = runLoad(t, m, 162)
	redisproc.Eventually(t, syncTimeout, "a snapshot past the recorded offset", func() (bool, string) {
		got := tp.infoInt("backlog", "snapshot_offset")
		return got > offset, strconv.FormatInt(got, 10)
	})
	stopLoad()

	out := restoreRDB(t, cfg.DataDir, digest, "--to-offset", strconv.FormatInt(offset, 10))
	used := snapshotLine.FindStringSubmatch(out)
	if used == nil {
		t.Fatal("restore names no snapshot")
	}
	meta, err := backlog.ReadMeta(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	kept := meta.Snapshots()
	if len(kept) < 2 || len(kept) > 3 {
		t.Fatalf("%d kept snapshots, want 2 or 3 with keep: 3", len(kept))
	}
	if base, _ := strconv.ParseInt(used[2], 10, 64); base > offset || used[1] == meta.Snapshot.File {
		t.Fatalf("restore to %d used snapshot %s at %d; the newest is %s at %d", offset, used[1], base, meta.Snapshot.File, meta.Snapshot.Offset)
	}
	files, _ := filepath.Glob(filepath.Join(cfg.DataDir, "snapshot", "*.rdb"))
	if len(files) > 3 {
		t.Fatalf("%d snapshot files with keep: 3", len(files))
	}
}

// Issue 22, point 1: a replica never expires keys by itself, and restore
// replays as one. The master has k with an absolute TTL, changed a few
// times, and b, with a TTL, already in the proxy's snapshot; both TTLs
// pass before the restore. The restored RDB at the recorded offset holds
// both, with the master's values and absolute expiry times, and the digest
// restore prints is the master's at that offset. Fed as a client, the
// replay dropped b at load and ran the INCRs on a missing k.
func TestRestoreKeepsTTLsThatPassedSince(t *testing.T) {
	m := redisproc.Start(t, masterArgs...)
	pxat := func(at time.Time) string { return strconv.FormatInt(at.UnixMilli(), 10) }
	baseAt := time.Now().Add(8 * time.Second).Truncate(time.Millisecond)
	if _, err := m.Do("SET", "b", "base", "PXAT", pxat(baseAt)); err != nil {
		t.Fatal(err)
	}
	cfg := proxyConfig(t, m.Addr())
	tp := startProxy(t, cfg)
	waitProxyAt(t, m, tp)
	if n, err := m.Do("EXISTS", "b"); err != nil || n != int64(1) {
		t.Fatalf("b expired before the proxy's first snapshot was taken (EXISTS: %v %v): the machine is too slow for this test", n, err)
	}
	kAt := baseAt.Add(-time.Second)
	for _, cmd := range [][]any{
		{"SET", "k", "1", "PXAT", pxat(kAt)},
		{"INCR", "k"}, {"INCR", "k"},
		{"SET", "k", "5", "KEEPTTL"},
		{"INCR", "k"},
	} {
		if _, err := m.Do(cmd...); err != nil {
			t.Fatal(err)
		}
	}
	offset := m.InfoInt("replication", "master_repl_offset")
	digest := m.Digest()
	if got, err := m.Do("PEXPIRETIME", "k"); err != nil || got != kAt.UnixMilli() || m.InfoInt("replication", "master_repl_offset") != offset {
		t.Fatalf("k expired or the master moved while the digest was taken (PEXPIRETIME %v %v)", got, err)
	}
	if snap := tp.infoInt("backlog", "snapshot_offset"); snap >= offset {
		t.Fatalf("the proxy's snapshot is at %d, not before the writes to k at %d", snap, offset)
	}

	// Both TTLs pass; reading the keys makes the master delete them, and
	// the DELs follow the target in the stream.
	time.Sleep(time.Until(baseAt) + 200*time.Millisecond)
	for _, k := range []string{"k", "b"} {
		if n, err := m.Do("EXISTS", k); err != nil || n != int64(0) {
			t.Fatalf("EXISTS %s after its TTL: %v %v", k, n, err)
		}
	}
	waitProxyAt(t, m, tp)

	dir := t.TempDir()
	out := runBinary(t, "restore", "--data-dir", cfg.DataDir, "--out", filepath.Join(dir, "dump.rdb"), "--to-offset", strconv.FormatInt(offset, 10))
	t.Logf("replproxy restore:\n%s", out)
	if got := digestLine.FindStringSubmatch(out); got == nil || got[1] != digest {
		t.Errorf("restore reports digest %v, want the master's %s at offset %d", got, digest, offset)
	}
	keys := readRDBStrings(t, filepath.Join(dir, "dump.rdb"))
	for _, want := range []rdbString{{"k", "6", kAt.UnixMilli()}, {"b", "base", baseAt.UnixMilli()}} {
		if got, ok := keys[want.key]; !ok || got != want {
			t.Errorf("restored RDB has %s = %+v (present: %v), want %+v", want.key, got, ok, want)
		}
	}

	// Newer servers replay as replicas too, to the same digest.
	for _, build := range []string{"redis-7.2.6", "redis-7.4.1", "valkey-8.0.1"} {
		bin := filepath.Join(redisproc.VersionsDir(), build, "src", "redis-server")
		if strings.HasPrefix(build, "valkey") {
			bin = filepath.Join(redisproc.VersionsDir(), build, "src", "valkey-server")
		}
		if _, err := os.Stat(bin); err != nil {
			t.Logf("no %s build at %s: not run with it", build, bin)
			continue
		}
		out := runBinary(t, "restore", "--data-dir", cfg.DataDir, "--out", filepath.Join(dir, build+".rdb"), "--to-offset", strconv.FormatInt(offset, 10), "--redis-server", bin)
		if got := digestLine.FindStringSubmatch(out); got == nil || got[1] != digest {
			t.Errorf("restore with %s reports digest %v, want the master's %s", build, got, digest)
		}
	}

	// A replay server that cannot load the snapshot (Redis 6.2, RDB
	// version 10) drops the link; restore says so, with its log.
	old := filepath.Join(redisproc.VersionsDir(), "redis-6.2.16", "src", "redis-server")
	if _, err := os.Stat(old); err != nil {
		t.Logf("no Redis 6.2 build at %s: the unloadable snapshot case is not run", old)
		return
	}
	cmd := exec.Command(binary, "restore", "--data-dir", cfg.DataDir, "--out", filepath.Join(dir, "old.rdb"), "--to-offset", strconv.FormatInt(offset, 10), "--redis-server", old)
	raw, err := cmd.CombinedOutput()
	t.Logf("replproxy restore with Redis 6.2: %v\n%s", err, raw)
	if err == nil || !strings.Contains(string(raw), "the temporary server dropped the replication link before it loaded the snapshot") || !strings.Contains(string(raw), "Can't handle RDB format version 10") {
		t.Errorf("restore with a server that cannot load the snapshot: %v", err)
	}
}

// waitProxyAt waits until the proxy is in sync and holds the master's
// whole stream.
func waitProxyAt(t *testing.T, m *redisproc.Server, tp *testProxy) {
	t.Helper()
	redisproc.Eventually(t, syncTimeout, "proxy to store the master's offset", func() (bool, string) {
		link := tp.info("replication")["master_link_status"]
		want, got := m.InfoInt("replication", "master_repl_offset"), tp.infoInt("replication", "master_repl_offset")
		return link == "up" && got == want, fmt.Sprintf("link %s, %d of %d", link, got, want)
	})
}

type rdbString struct {
	key, value string
	expireMs   int64 // 0: none
}

// readRDBStrings parses an RDB file's string keys, with their absolute
// expiry, as any loader would see them before dropping expired ones.
func readRDBStrings(t *testing.T, path string) map[string]rdbString {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string]rdbString{}
	err = parser.NewDecoder(bufio.NewReader(f)).Parse(func(o model.RedisObject) bool {
		if s, ok := o.(*model.StringObject); ok {
			k := rdbString{key: s.Key, value: string(s.Value)}
			if exp := s.GetExpiration(); exp != nil {
				k.expireMs = exp.UnixMilli()
			}
			keys[s.Key] = k
		}
		return true
	})
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return keys
}

// Issue 22, point 4: a damaged kept snapshot is never a restore's base. With
// the newest snapshot before the target corrupted, restore starts from an
// older kept one, replays more of the stream, names the damaged file in a
// note, and reaches the master's digest all the same.
func TestRestorePassesOverADamagedSnapshot(t *testing.T) {
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Snapshot.Keep = 3
	cfg.Snapshot.RefreshAfter = 1
	cfg.Snapshot.MinInterval = proxy.Duration(2 * time.Second)
	tp := startProxy(t, cfg)
	stopLoad := runLoad(t, m, 171)
	redisproc.Eventually(t, syncTimeout, "two snapshot refreshes", func() (bool, string) {
		n := tp.infoInt("stats", "snapshot_refreshes")
		return n >= 2, strconv.FormatInt(n, 10)
	})
	stopLoad()
	digest, offset := quiesce(t, m, tp)
	tp.stop() // the kept snapshots stay as they are from here on

	meta, err := backlog.ReadMeta(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	var before []backlog.SnapshotInfo
	for _, s := range meta.Snapshots() {
		if s.Offset <= offset {
			before = append(before, s)
		}
	}
	if len(before) < 2 {
		t.Fatalf("kept snapshots %+v: want two at or before offset %d", meta.Snapshots(), offset)
	}
	damaged, older := before[len(before)-1], before[len(before)-2]
	path := filepath.Join(cfg.DataDir, "snapshot", damaged.File)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("XXXX"), damaged.Size/2)
	f.Close()

	out := restoreRDB(t, cfg.DataDir, digest, "--to-offset", strconv.FormatInt(offset, 10))
	if used := snapshotLine.FindStringSubmatch(out); used == nil || used[1] != older.File {
		t.Errorf("restore used %v, want the older intact snapshot %s", used, older.File)
	}
	if want := "note       kept snapshot " + path + " is damaged: its CRC-64 is "; !strings.Contains(out, want) {
		t.Errorf("restore output lacks %q", want)
	}
	if want := "started from the older kept snapshot " + older.File + " instead"; !strings.Contains(out, want) {
		t.Errorf("restore output lacks %q", want)
	}

	// A target at a snapshot's own offset replays nothing: the output is
	// that snapshot's data, keys past their TTL included, as a replica
	// loading it keeps them.
	if older.Offset == 0 {
		return // offset 0 is no target
	}
	dir := t.TempDir()
	out = runBinary(t, "restore", "--data-dir", cfg.DataDir, "--out", filepath.Join(dir, "dump.rdb"), "--to-offset", strconv.FormatInt(older.Offset, 10))
	got := digestLine.FindStringSubmatch(out)
	if !strings.Contains(out, "replayed   nothing") || got == nil {
		t.Fatalf("restore to the snapshot's offset %d:\n%s", older.Offset, out)
	}
	if want := digestAsReplica(t, filepath.Join(cfg.DataDir, "snapshot"), older.File); got[1] != want {
		t.Errorf("restore to the snapshot's offset reports digest %s; the snapshot loaded by a replica has %s", got[1], want)
	}
	if again := digestAsReplica(t, dir, "dump.rdb"); again != got[1] {
		t.Errorf("restore reports digest %s; its RDB loaded by a replica has %s", got[1], again)
	}
}

// digestAsReplica loads an RDB into a redis-server that is a replica (of
// a port nobody listens on), so that keys past their TTL are kept, as a
// replica keeps them, and returns its digest.
func digestAsReplica(t *testing.T, dir, file string) string {
	t.Helper()
	s := redisproc.Start(t, "--dir", dir, "--dbfilename", file, "--replicaof", "127.0.0.1", strconv.Itoa(redisproc.FreePort(t)))
	return s.Digest()
}
