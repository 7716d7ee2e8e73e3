package proxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// logLines decodes the proxy's JSON log.
func logLines(t *testing.T, path string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range bytes.Split(raw, []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// Issue 8, point 1: an fsync error during streaming (injected through the
// store's sync function) means nothing past the last fsynced byte is
// acknowledged: the log is cut back to the durable offset, logged at error
// level, and the link resumes from exactly there with a partial resync.
func TestFsyncFailureResumesPartially(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	var fail atomic.Bool
	var failed atomic.Int64
	proxy.SetBacklogSync(&cfg, func(f *os.File) error {
		if strings.HasSuffix(f.Name(), ".seg") && fail.CompareAndSwap(true, false) {
			failed.Add(1)
			return fmt.Errorf("fsync %s: injected EIO", f.Name())
		}
		return f.Sync()
	})
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	stopLoad := runLoad(t, m, 21)
	waitOps(t, m, 500)
	fail.Store(true)
	redisproc.Eventually(t, syncTimeout, "an injected fsync failure", func() (bool, string) {
		return failed.Load() == 1, ""
	})
	waitOps(t, m, 500)
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 1)
	expectInt(t, "master sync_partial_ok", m.InfoInt("stats", "sync_partial_ok"), 1)

	durable := ""
	resumed := false
	for _, line := range logLines(t, r.proxy.logPath) {
		msg, _ := line["message"].(string)
		if strings.HasPrefix(msg, "fsync failed") && line["level"] == "error" {
			durable = strconv.FormatInt(int64(line["durable"].(float64)), 10)
		}
		if durable != "" && msg == "PSYNC answered" {
			if line["offset"] != durable || !strings.HasPrefix(line["reply"].(string), "+CONTINUE") {
				t.Fatalf("after the failed fsync (durable %s) the link resumed with %v", durable, line)
			}
			resumed = true
			break
		}
	}
	if !resumed {
		t.Fatalf("no error-level fsync failure followed by a PSYNC from the durable offset (durable %q)", durable)
	}
}

// segmentsOf lists the current generation's segment files in offset order.
func segmentsOf(t *testing.T, dataDir string) []string {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dataDir, "log", "*", "*.seg"))
	sort.Strings(segs)
	return segs
}

// writeValues writes n keys whose values are runs of 'v', so a flipped
// byte inside one changes data without breaking the protocol.
func writeValues(t *testing.T, m *redisproc.Server, prefix string, n int) {
	t.Helper()
	c := m.Client()
	value := strings.Repeat("v", 4000)
	for i := 0; i < n; i += 100 {
		pipe := c.Pipeline()
		for j := i; j < min(i+100, n); j++ {
			pipe.Set(t.Context(), prefix+strconv.Itoa(j), value, 0)
		}
		if _, err := pipe.Exec(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
}

// flipValueByte turns one 'v' in the middle of seg into 'w' and returns
// its position.
func flipValueByte(t *testing.T, seg string) int64 {
	t.Helper()
	raw, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(raw[len(raw)/2:], bytes.Repeat([]byte("v"), 64))
	if at < 0 {
		t.Fatalf("no value bytes in %s", seg)
	}
	pos := int64(len(raw)/2 + at + 32)
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("w"), pos); err != nil {
		t.Fatal(err)
	}
	return pos
}

// Issue 8, point 3: a byte flipped in a sealed segment (not one of the last
// two), once while the proxy is stopped and once while it runs, is found
// before it is sent: the replica that resyncs partially from before it ends
// with the master's digest, and the log names the file and the range.
func TestFlippedSegmentByteNeverServed(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Backlog.ScrubRate = 0 // the check before the first send must catch it alone
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	rep := r.addReplica(t)
	writeValues(t, m, "a", 200)
	r.waitInSync(t)

	for _, running := range []bool{false, true} {
		if err := rep.Shutdown(true); err != nil {
			t.Fatal(err)
		}
		before := len(segmentsOf(t, cfg.DataDir))
		writeValues(t, m, fmt.Sprintf("b%v", running), 2000) // about 8 segments
		waitProxyWithin(t, m, r.proxy, 0)
		if !running {
			r.proxy.stop()
		}
		segs := segmentsOf(t, cfg.DataDir)
		if len(segs) < before+4 {
			t.Fatalf("only %d segments after the write, %d before", len(segs), before)
		}
		seg := segs[len(segs)-4]
		flipValueByte(t, seg)
		if !running {
			waitUnlocked(t, cfg.DataDir)
			r.proxy.start()
		}
		rep.Restart(t)
		r.waitInSync(t)
		found := false
		for _, line := range logLines(t, r.proxy.logPath) {
			problem, _ := line["problem"].(string)
			if line["file"] == seg && line["level"] == "error" && strings.HasPrefix(problem, "checksum mismatch in bytes ") {
				found = true
			}
		}
		if !found {
			t.Fatalf("running=%v: no error-level log line names %s and the damaged range", running, seg)
		}
		if moved, _ := filepath.Glob(filepath.Join(cfg.DataDir, "damaged", "*", filepath.Base(seg))); len(moved) == 0 {
			t.Fatalf("running=%v: %s not moved aside", running, seg)
		}
	}
	expectInt(t, "master sync_full (the proxy resynced partially)", m.InfoInt("stats", "sync_full"), 1)
	expectInt(t, "proxy sync_full since its restart (the replica resynced partially)", r.proxy.infoInt("stats", "sync_full"), 0)
}

// Issue 8, point 4: a bit flipped in the stored snapshot, in its body and
// then in its header, is found at start: no replica is sent it, the proxy
// full-syncs from its master once, a new replica syncs with the master's
// digest, and the full syncs do not loop.
func TestFlippedSnapshotBitNeverServed(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	writeValues(t, m, "k", 300) // an RDB with a body worth flipping
	cfg := proxyConfig(t, m.Addr())
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	r.waitInSync(t)
	for i, where := range []string{"body", "header"} {
		r.proxy.stop()
		snaps, _ := filepath.Glob(filepath.Join(cfg.DataDir, "snapshot", "*.rdb"))
		if len(snaps) != 1 {
			t.Fatalf("snapshots: %v", snaps)
		}
		raw, _ := os.ReadFile(snaps[0])
		pos := len(raw) / 2
		if where == "header" {
			pos = 3
		}
		raw[pos] ^= 0x04
		if err := os.WriteFile(snaps[0], raw, 0o600); err != nil {
			t.Fatal(err)
		}
		waitUnlocked(t, cfg.DataDir)
		r.proxy.start()
		r.addReplica(t)
		r.waitInSync(t)
		expectInt(t, where+": master sync_full", m.InfoInt("stats", "sync_full"), int64(2+i))
		// Since the restart each replica full-synced at most once (an old
		// one that asked before the proxy had its new history too), and
		// then no more: no loop.
		fulls := r.proxy.infoInt("stats", "sync_full")
		if fulls < 1 || fulls > int64(len(r.replicas)) {
			t.Fatalf("%s: proxy sync_full %d with %d replicas", where, fulls, len(r.replicas))
		}
		time.Sleep(2 * time.Second)
		expectInt(t, where+": proxy sync_full two seconds later", r.proxy.infoInt("stats", "sync_full"), fulls)
		if moved, _ := filepath.Glob(filepath.Join(cfg.DataDir, "damaged", "*", filepath.Base(snaps[0]))); len(moved) != i+1 {
			t.Fatalf("%s: the damaged snapshot was not moved aside: %v", where, moved)
		}
		if !strings.Contains(tail(r.proxy.logPath, 300), snaps[0]) {
			t.Fatalf("%s: the damaged snapshot %s is not named in the log", where, snaps[0])
		}
	}
}

// waitUnlocked waits until no process holds the data dir's lock: a child
// forked by a parallel test keeps a copy of the proxy's descriptors, and
// with them its flock, until it execs.
func waitUnlocked(t *testing.T, dataDir string) {
	t.Helper()
	redisproc.Eventually(t, 10*time.Second, "the data dir lock to be free", func() (bool, string) {
		f, err := os.Open(filepath.Join(dataDir, "LOCK"))
		if err != nil {
			return false, err.Error()
		}
		defer f.Close()
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return false, err.Error()
		}
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return true, ""
	})
}

// Issue 21, point 4: damage found three times in a running proxy, each
// time moving the damaged segment and the ones after it into damaged/:
// damaged/ stays within damaged.max_bytes, each damaged segment is kept,
// INFO shows the size, and the proxy keeps relaying (equal digests, no
// full sync). Before the bound, damaged/ held every moved segment.
func TestRepeatedDamageStaysWithinItsBound(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Backlog.ScrubRate = 0
	cfg.Damaged.MaxBytes = 6 << 20
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	rep := r.addReplica(t)
	writeValues(t, m, "a", 200)
	r.waitInSync(t)
	var kept []string
	for round := 0; round < 3; round++ {
		if err := rep.Shutdown(true); err != nil {
			t.Fatal(err)
		}
		writeValues(t, m, fmt.Sprintf("round%d", round), 2000) // about 8 segments
		waitProxyWithin(t, m, r.proxy, 0)
		segs := segmentsOf(t, cfg.DataDir)
		seg := segs[len(segs)-4]
		flipValueByte(t, seg)
		rep.Restart(t)
		r.waitInSync(t)
		kept = append(kept, filepath.Base(seg))
		used := duBytes(t, filepath.Join(cfg.DataDir, "damaged"))
		reported := r.proxy.infoInt("proxy", "damaged_bytes")
		t.Logf("round %d: damaged/ uses %d bytes, INFO damaged_bytes %d, bound %d", round, used, reported, cfg.Damaged.MaxBytes)
		if used > int64(cfg.Damaged.MaxBytes) || reported <= 0 || reported > int64(cfg.Damaged.MaxBytes) {
			t.Fatalf("round %d: damaged/ uses %d bytes (INFO says %d), over its bound %d", round, used, reported, cfg.Damaged.MaxBytes)
		}
		for _, name := range kept {
			if found, _ := filepath.Glob(filepath.Join(cfg.DataDir, "damaged", "*", name)); len(found) != 1 {
				t.Fatalf("round %d: the damaged segment %s is not kept", round, name)
			}
		}
	}
	if !strings.Contains(tail(r.proxy.logPath, 2000), "deleted from damaged/") {
		t.Fatal("no deletion from damaged/ was logged")
	}
	expectInt(t, "master sync_full (the proxy resynced partially each time)", m.InfoInt("stats", "sync_full"), 1)
}

// duBytes is the disk space under path, as du counts it.
func duBytes(t *testing.T, path string) int64 {
	t.Helper()
	out, err := exec.Command("du", "-s", "-B1", path).Output()
	if err != nil {
		t.Fatalf("du %s: %v", path, err)
	}
	n, _ := strconv.ParseInt(strings.Fields(string(out))[0], 10, 64)
	return n
}
