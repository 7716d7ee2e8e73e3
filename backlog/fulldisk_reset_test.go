package backlog

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
)

// mountSmallExt4 mounts a loop-backed ext4 of size bytes for the test
// (ext4 rather than tmpfs: its directories take data blocks, so a mkdir
// on a full disk fails), or skips without root.
func mountSmallExt4(t *testing.T, size int64) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "rev2-ext4.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	f.Close()
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v %s", err, out)
	}
	mnt, err := os.MkdirTemp("", "rev2-ext4-")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		os.Remove(mnt)
		t.Skipf("this test loop-mounts a small ext4, which needs root: %v %s", err, out)
	}
	t.Cleanup(func() {
		exec.Command("umount", mnt).Run()
		os.Remove(mnt)
	})
	return mnt
}

// fillDisk writes into dir until the filesystem is full.
func fillDisk(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			return
		}
	}
}

// A snapshot adoption (Reset) whose RDB was stored but whose new log
// generation could not be created (ENOSPC: the RDB took the last blocks)
// left that RDB in snapshot/, named by no meta, until the next restart:
// on a full disk, an RDB's worth of space lost at every failed attempt.
// Now it is removed, as when the meta write fails, and the store still
// serves the snapshot it had.
func TestResetOnFullDiskLeavesNoRDB(t *testing.T) {
	mnt := mountSmallExt4(t, 16<<20)
	dir := filepath.Join(mnt, "data")
	s := newStore(t, dir, testOptions(), 0)
	defer s.Close()
	before := s.State().Snapshot.File
	w, err := s.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(pattern(1<<20, 3)); err != nil {
		t.Fatal(err)
	}
	fillDisk(t, mnt)
	if err := s.Reset(RandomReplID(), 5000, w); err == nil {
		t.Skip("the new log generation was created on the full disk; nothing to check")
	}
	left, _ := filepath.Glob(filepath.Join(dir, "snapshot", "*"))
	if len(left) != 1 || filepath.Base(left[0]) != before {
		t.Fatalf("after a failed adoption snapshot/ holds %v, want only %s", left, before)
	}
	if got := s.State().Snapshot.File; got != before {
		t.Fatalf("the store's snapshot is %s, want %s", got, before)
	}
}

// A snapshot whose directory fsync failed after its rename (EIO) is named
// by no meta, as the adoption fails: it was left in snapshot/ until the
// next restart, an RDB's worth of space on a disk already failing.
func TestAdoptWithFailedDirSyncLeavesNoRDB(t *testing.T) {
	dir := t.TempDir()
	var failDir atomic.Bool
	opt := testOptions()
	opt.Log.Sync = func(f *os.File) error {
		if failDir.Load() && filepath.Base(f.Name()) == "snapshot" {
			return syscall.EIO
		}
		return f.Sync()
	}
	s := newStore(t, dir, opt, 0)
	defer s.Close()
	s.Append(pattern(100, 1))
	before := s.State().Snapshot.File
	w, err := s.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write(append([]byte("REDIS0011"), pattern(10000, 2)...))
	failDir.Store(true)
	if err := s.AdoptSnapshot(s.State().ReplID, 50, w); !errors.Is(err, syscall.EIO) {
		t.Fatalf("adopt with a failing directory fsync: %v, want EIO", err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "snapshot", "*"))
	if len(left) != 1 || filepath.Base(left[0]) != before {
		t.Fatalf("after a failed adoption snapshot/ holds %v, want only %s", left, before)
	}
}
