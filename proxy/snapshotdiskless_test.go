package proxy_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// A replica with repl-diskless-load parses the RDB as it arrives and exits
// on a corrupt one ("Terminating server after rdb file reading failure")
// before any trailer is due: holding back the last 8 bytes protects only
// replicas that load from disk. A byte flipped in the stored snapshot after
// its first serve (here the length of an LZF string) reached a
// diskless-load replica and killed it. The snapshot is now checked whole
// immediately before each serve: that replica is never sent it.
func TestSnapshotDamagedNeverReachesADisklessLoadReplica(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	writeValues(t, m, "k", 300)
	cfg := proxyConfig(t, m.Addr())
	cfg.Backlog.ScrubRate = 0 // only the check at each send can catch it
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t)
	r.waitInSync(t)

	snaps, _ := filepath.Glob(filepath.Join(cfg.DataDir, "snapshot", "*.rdb"))
	if len(snaps) != 1 {
		t.Fatalf("snapshots: %v", snaps)
	}
	flipLZFLength(t, snaps[0])

	rep := redisproc.Start(t, "--repl-diskless-load", "on-empty-db", "--replicaof", "127.0.0.1", strconv.Itoa(r.proxy.port))
	r.replicas = append(r.replicas, rep)
	r.waitInSync(t)
	for _, bad := range []string{"Terminating server", "Failure loading rdb format", "Aborting now"} {
		if tail := rep.LogTail(200); strings.Contains(tail, bad) {
			t.Fatalf("the diskless-load replica logged %q:\n%s", bad, tail)
		}
	}
	if d := rep.Digest(); d != m.Digest() {
		t.Fatalf("the replica's digest %s differs from the master's %s", d, m.Digest())
	}
}

// flipLZFLength changes the uncompressed length of the RDB's first
// LZF-compressed string: decompressing it then fails, which a Redis
// parser reports as corruption ("Invalid LZF compressed string").
func flipLZFLength(t *testing.T, path string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Index(raw, []byte{0xfe, 0x00, 0xfb})
	if body < 0 {
		t.Fatalf("no SELECTDB 0 + RESIZEDB in %s", path)
	}
	at := bytes.IndexByte(raw[body:], 0xc3) // a string encoded as LZF
	if at < 0 {
		t.Fatalf("no LZF string in %s", path)
	}
	pos := body + at + 1
	lenEnd := func(p int) int { // the end of the length encoded at p
		switch raw[p] >> 6 {
		case 0:
			return p + 1
		case 1:
			return p + 2
		}
		t.Fatalf("unexpected length encoding %#x at %d in %s", raw[p], p, path)
		return 0
	}
	pos = lenEnd(lenEnd(pos)) - 1 // the last byte of the second length: the uncompressed one
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{raw[pos] ^ 0x01}, int64(pos)); err != nil {
		t.Fatal(err)
	}
}
