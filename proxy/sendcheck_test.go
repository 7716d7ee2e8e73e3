package proxy_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 21, point 1: a byte flipped in a backlog region that a replica has
// already been served from disk (so checked once) is checked again when a
// second replica resyncs partially across it: it is not sent, an
// error-level line names the file and the range, and the second replica
// ends with the master's digest once the master has resent the bytes.
func TestDamageAfterAFirstSendIsNeverServed(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Backlog.ScrubRate = 0 // only the check at each send can catch it
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	first, second := r.addReplica(t), r.addReplica(t)
	writeValues(t, m, "a", 200)
	r.waitInSync(t)
	for _, rep := range []*redisproc.Server{first, second} {
		if err := rep.Shutdown(true); err != nil {
			t.Fatal(err)
		}
	}
	before := len(segmentsOf(t, cfg.DataDir))
	writeValues(t, m, "b", 2000) // about 8 segments
	waitProxyWithin(t, m, r.proxy, 0)
	segs := segmentsOf(t, cfg.DataDir)
	if len(segs) < before+4 {
		t.Fatalf("only %d segments after the write, %d before", len(segs), before)
	}
	// The first replica catches up from disk, across every new segment.
	first.Restart(t)
	redisproc.WaitInSync(t, syncTimeout, m, first)
	if n := r.proxy.infoInt("stats", "stream_bytes_from_disk"); n < 4<<20 {
		t.Fatalf("the first replica was sent %d bytes from disk; the test needs it to read the segments", n)
	}

	seg := segs[len(segs)-4]
	flipValueByte(t, seg) // through the page cache of the running proxy
	second.Restart(t)
	r.waitInSync(t)
	found := false
	for _, line := range logLines(t, r.proxy.logPath) {
		problem, _ := line["problem"].(string)
		if line["file"] == seg && line["level"] == "error" && strings.HasPrefix(problem, "checksum mismatch in bytes ") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no error-level log line names %s and the damaged range", seg)
	}
	expectInt(t, "proxy sync_full (both replicas resynced partially)", r.proxy.infoInt("stats", "sync_full"), 2)
}

// Issue 21, point 2: a bit flipped in the stored snapshot after it was
// checked and served once is caught at the next full sync: the replica is
// never sent the RDB whole (its CRC-64 trailer is held back), so it does
// not terminate, and it ends with the master's digest from a fresh snapshot.
func TestSnapshotDamagedAfterItsFirstServeIsNeverServedWhole(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	writeValues(t, m, "k", 300) // an RDB with a body worth flipping
	cfg := proxyConfig(t, m.Addr())
	cfg.Backlog.ScrubRate = 0 // only the check at each send can catch it
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	r.waitInSync(t)
	expectInt(t, "proxy sync_full after the first replica", r.proxy.infoInt("stats", "sync_full"), 1)

	snaps, _ := filepath.Glob(filepath.Join(cfg.DataDir, "snapshot", "*.rdb"))
	if len(snaps) != 1 {
		t.Fatalf("snapshots: %v", snaps)
	}
	f, err := os.OpenFile(snaps[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := f.Stat()
	b := []byte{0}
	pos := info.Size() / 2
	f.ReadAt(b, pos)
	b[0] ^= 0x04
	if _, err := f.WriteAt(b, pos); err != nil {
		t.Fatal(err)
	}
	f.Close()

	rep := r.addReplica(t)
	r.waitInSync(t)
	for _, s := range r.replicas {
		for _, bad := range []string{"Wrong RDB checksum", "Terminating server", "Aborting now"} {
			if tail := s.LogTail(200); strings.Contains(tail, bad) {
				t.Fatalf("replica %s logged %q:\n%s", s.Addr(), bad, tail)
			}
		}
	}
	if moved, _ := filepath.Glob(filepath.Join(cfg.DataDir, "damaged", "*", filepath.Base(snaps[0]))); len(moved) != 1 {
		t.Fatalf("the damaged snapshot was not moved aside: %v", moved)
	}
	found := false
	for _, line := range logLines(t, r.proxy.logPath) {
		if e, _ := line["error"].(string); line["level"] == "error" && strings.Contains(e, snaps[0]) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no error-level log line names %s", snaps[0])
	}
	if d := rep.Digest(); d != m.Digest() {
		t.Fatalf("the new replica's digest %s differs from the master's %s", d, m.Digest())
	}
}
