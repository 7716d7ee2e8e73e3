package main

import (
	"archive/tar"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/redisproc"
)

// The fixtures are data dirs written by the release before issue 27's
// restructuring (commit 4d84c69), behind a Redis 7.2.6 master:
//   - datadir-4d84c69.tgz: 200 keys, the proxy started (snapshot at 0), a
//     Redis 7.0 replica served a snapshot converted to redis-7.0 format
//     (converted/), 150 keys of 10 KB and 70 small ones streamed, which
//     made a refresh (snapshot.keep 2: snapshots at 0 and 1507059 in
//     snapshot/, two 1 MiB segments in log/1, refresh.json);
//   - datadir-4d84c69-damaged.tgz: the same after a byte of the first
//     segment was flipped and the proxy restarted: both segments moved to
//     damaged/<time>/, a new generation log/2 from a full sync at 1507792.
//
// untarFixture unpacks one into a fresh directory.
func untarFixture(t *testing.T, name string) string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return dir
		}
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, filepath.Clean("/"+h.Name))
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(path, 0o700)
		case tar.TypeReg:
			var out *os.File
			if out, err = os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600); err == nil {
				_, err = io.Copy(out, tr)
				out.Close()
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Issue 27 review, point 5: backlog.Layout names the data dir as the
// release before it wrote it. inspect, verify and restore read such a dir,
// restore to the same data as that release did (DEBUG DIGEST), and the
// store opens it with its kept snapshots, its whole backlog and its
// converted snapshot in place.
func TestDataDirFromThePreviousRelease(t *testing.T) {
	dir := untarFixture(t, "datadir-4d84c69.tgz")
	out, err := runCLI(t, "inspect", "--data-dir", dir)
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	for _, want := range []string{
		"eaf1adcdd60f7a94d9e6f04a0be2be142e4c2b23-00000000000001507059.rdb at offset 1507059",
		"400 keys",
		"backlog    epoch 1, 2 segments, offsets [1, 1507779)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect lacks %q:\n%s", want, out)
		}
	}
	if out, err := runCLI(t, "verify", "--data-dir", dir); err != nil || !strings.Contains(out, "backlog: 2 segments, offsets [1, 1507779)") {
		t.Errorf("verify: %v\n%s", err, out)
	}

	t.Run("restore", func(t *testing.T) {
		if _, err := os.Stat(filepath.Join(redisproc.VersionsDir(), "redis-7.2.6", "src", "redis-server")); err != nil {
			t.Skip("no redis-7.2.6 build to load the fixture's RDBs (make compat builds it)")
		}
		restoreFixtureAt1000(t, dir)
	})

	store, err := backlog.Open(dir, backlog.Options{Log: backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 8 << 20, Fsync: backlog.FsyncNo}, SnapshotKeep: 2, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer store.Close()
	st := store.State()
	if st.ReplID != "eaf1adcdd60f7a94d9e6f04a0be2be142e4c2b23" || st.First != 1 || st.End != 1507779 || st.Snapshot == nil || st.Snapshot.Offset != 1507059 {
		t.Errorf("the store opened with %+v", st)
	}
	if m, err := backlog.ReadMeta(dir); err != nil || len(m.History) != 1 || m.History[0].Offset != 0 {
		t.Errorf("the kept snapshot at 0 is gone after open: %+v, %v", m.History, err)
	}
	if _, err := os.Stat(filepath.Join(backlog.Layout(dir).Converted(), "eaf1adcdd60f7a94d9e6f04a0be2be142e4c2b23-00000000000000000000.rdb.rdb10.rdb")); err != nil {
		t.Errorf("converted snapshot: %v", err)
	}
}

// Issue 27 review, point 5: what the previous release moved to damaged/ is
// counted by the store (INFO, status and the metrics report it) and kept.
func TestDamagedFromThePreviousRelease(t *testing.T) {
	dir := untarFixture(t, "datadir-4d84c69-damaged.tgz")
	store, err := backlog.Open(dir, backlog.Options{Log: backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 8 << 20, Fsync: backlog.FsyncNo}, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	st := store.State()
	if st.Snapshot == nil || st.Snapshot.Offset != 1507792 || st.End != 1507793 {
		t.Errorf("the store opened with %+v", st)
	}
	// Two 1 MiB-capped segments and their indexes, as the release moved them.
	if got := store.DamagedBytes(); got < 1500000 {
		t.Errorf("damaged bytes %d: the previous release's damaged/ is not counted", got)
	}
	store.Close()
	seg, _ := filepath.Glob(filepath.Join(backlog.Layout(dir).Damaged(), "*", "*.seg"))
	if len(seg) != 2 {
		t.Errorf("damaged/ holds %v after open, want the two segments", seg)
	}
	if out, err := runCLI(t, "verify", "--data-dir", dir); err != nil {
		t.Errorf("verify: %v\n%s", err, out)
	}
}

// restoreFixtureAt1000 restores the fixture at offset 1000, before its
// current snapshot: only the kept one at 0 and the backlog's first segment
// can build it. The digest is what the previous release's restore gave.
func restoreFixtureAt1000(t *testing.T, dir string) {
	r72 := redisproc.Built(t, "redis-7.2.6")
	rdb := filepath.Join(t.TempDir(), "at1000.rdb")
	if out, err := runCLI(t, "restore", "--data-dir", dir, "--out", rdb, "--to-offset", "1000", "--redis-server", r72.Path); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	s := redisproc.StartBinary(t, r72, "--dir", filepath.Dir(rdb), "--dbfilename", filepath.Base(rdb))
	if got, want := s.Digest(), "9f1b16a5b29a6c460c522f410587c77fe079139c"; got != want {
		t.Errorf("restore at offset 1000: digest %s, want %s (the previous release's)", got, want)
	}
}
