package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
)

// Issue 22, point 4: a corrupt older kept snapshot is reported by verify,
// which once checked only the current one, and restore names the damaged
// file and says which targets it can still reach, where it once said
// "CRC-64 ..., meta says ...".
func TestVerifyAndRestoreNameADamagedKeptSnapshot(t *testing.T) {
	dir := t.TempDir()
	s, err := backlog.Open(dir, backlog.Options{
		Log:          backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: backlog.FsyncNo},
		SnapshotKeep: 3,
		Logger:       zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	snapshot := func(body string) *backlog.SnapshotWriter {
		w, _ := s.NewSnapshot()
		w.Write([]byte("REDIS0010" + body))
		return w
	}
	replid := backlog.RandomReplID()
	if err := s.Reset(replid, 0, snapshot(" the older one")); err != nil {
		t.Fatal(err)
	}
	ping := []byte("*1\r\n$4\r\nPING\r\n")
	s.Append(bytes.Repeat(ping, 100))
	newer := int64(100 * len(ping))
	if err := s.AdoptSnapshot(replid, newer, snapshot(" the newer one")); err != nil {
		t.Fatal(err)
	}
	s.Append(bytes.Repeat(ping, 100))
	meta := s.State()
	s.Close()
	if out, err := runCLI(t, "verify", "--data-dir", dir); err != nil || !strings.HasSuffix(out, "ok\n") {
		t.Fatalf("verify on a good dir: %q %v", out, err)
	}
	m, err := backlog.ReadMeta(dir)
	if err != nil || len(m.History) != 1 || m.Snapshot.File != meta.Snapshot.File {
		t.Fatalf("meta: %+v %v, want one kept snapshot before the current one", m, err)
	}
	older := filepath.Join(dir, "snapshot", m.History[0].File)
	f, _ := os.OpenFile(older, os.O_RDWR, 0)
	f.WriteAt([]byte{'X'}, 12)
	f.Close()

	out, err := runCLI(t, "verify", "--data-dir", dir)
	for _, want := range []string{
		"kept snapshot " + m.History[0].File + " at offset 0, 23 bytes\n",
		"PROBLEM: kept snapshot at offset 0: snapshot " + older + ": CRC-64 ",
		"then: replication is unaffected (only the current snapshot is served); replproxy restore starts a target at or after offset 0 from an older intact kept snapshot instead",
	} {
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("verify with a damaged kept snapshot lacks %q:\n%s(%v)", want, out, err)
		}
	}

	out, err = runCLI(t, "restore", "--data-dir", dir, "--out", filepath.Join(t.TempDir(), "dump.rdb"), "--to-offset", "50")
	if err == nil {
		t.Fatalf("restore from a damaged snapshot succeeded: %s", out)
	}
	for _, want := range []string{
		"kept snapshot " + older + " is damaged: its CRC-64 is ",
		"no older kept snapshot is intact, so the state at offset 50 cannot be rebuilt from this data dir",
		"Targets at or after offset " + strconv.FormatInt(newer, 10) + " can still be restored, from the kept snapshot " + m.Snapshot.File,
		"replproxy verify --data-dir " + dir + " lists every damaged file",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("restore's error lacks %q:\n%v", want, err)
		}
	}
}
