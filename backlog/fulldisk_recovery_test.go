package backlog

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// A segment found damaged at recovery is copied into damaged/ before it is
// repaired in place. On a full data dir the copy fails with ENOSPC, and the
// log, so the store and the proxy, failed to open: a full disk and a
// damaged segment kept the proxy from starting. Now the damaged segment
// is moved aside whole instead (a rename needs no space), the log opens
// ending before it, and the partial copy is not left behind.
func TestDamageAtRecoveryOnFullDisk(t *testing.T) {
	mnt, err := os.MkdirTemp("", "rev2-fulldisk-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(mnt)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("this test mounts a small tmpfs, which needs root: %v %s", err, out)
	}
	defer exec.Command("umount", mnt).Run()
	logDir := filepath.Join(mnt, "log")
	logs := &logBuffer{}
	opt := logOptions(mnt, nil, logs)
	opt.Fsync = FsyncNo // segments are rolled without fsync, so never sealed
	l, err := OpenLog(logDir, 1, opt)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		if err := l.Append(pattern(100, byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	flipByte(t, segmentPath(logDir, 1001), 250)
	fill, err := os.Create(filepath.Join(mnt, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := fill.Write(make([]byte, 4096)); err != nil {
			break
		}
	}
	fill.Close()
	l, err = OpenLog(logDir, 1, opt)
	if err != nil {
		t.Fatalf("the log does not open on a full disk with a damaged segment: %v", err)
	}
	defer l.Close()
	if _, end := l.Bounds(); end != 1001 {
		t.Fatalf("end %d, want the log to end before the damaged segment (1001)", end)
	}
	kept, _ := filepath.Glob(filepath.Join(mnt, "damaged", "*", "*"))
	var names []string
	for _, k := range kept {
		names = append(names, filepath.Base(k))
		if fi, err := os.Stat(k); err == nil && strings.HasSuffix(k, ".seg") && fi.Size() == 0 {
			t.Fatalf("a partial copy is left in damaged/: %v", kept)
		}
	}
	found := false
	for _, n := range names {
		found = found || n == filepath.Base(segmentPath(logDir, 1001))
	}
	// The manifest, created empty by ENOSPC, counts as none: nothing there
	// is deleted by the bound.
	if m := readManifest(filepath.Dir(kept[0])); m != nil {
		t.Fatalf("a manifest cut short by the full disk is read as whole: %v", m)
	}
	if !found {
		t.Fatalf("damaged segment not kept in damaged/: %v\n%s", names, logs.String())
	}
}

// Damage found while running on a full data dir: the segments are moved
// aside (renames need no space) but the manifest naming the damaged one
// is created empty (ENOSPC). The bound, at that damage and at the next
// ones, then took the damaged segment for stream moved along and deleted
// it. It stays now, with its index.
func TestDamageMovedOnFullDiskKeepsTheSegment(t *testing.T) {
	mnt, err := os.MkdirTemp("", "rev2-fulldisk-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(mnt)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("this test mounts a small tmpfs, which needs root: %v %s", err, out)
	}
	defer exec.Command("umount", mnt).Run()
	logDir := filepath.Join(mnt, "log")
	opt := logOptions(mnt, nil, nil)
	opt.SegmentBytes = 64 << 10
	opt.DamagedMaxBytes = 16 << 10 // below one segment: everything moved along goes
	l, err := OpenLog(logDir, 1, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < 8; i++ {
		if err := l.Append(pattern(64<<10, byte(i))); err != nil {
			t.Fatal(err)
		}
	}
	l.SyncNow()
	segs, _ := filepath.Glob(filepath.Join(logDir, "*.seg"))
	sort.Strings(segs)
	victim := segs[2]
	flipByte(t, victim, 1000)
	fill, err := os.Create(filepath.Join(mnt, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := fill.Write(make([]byte, 4096)); err != nil {
			break
		}
	}
	fill.Close()
	c, err := l.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	for {
		n, err := c.Send(io.Discard, 1<<20)
		if errors.Is(err, ErrDamaged) {
			break
		}
		if err != nil || n == 0 {
			c.Close()
			t.Fatalf("send: %d %v; the flipped byte was not found", n, err)
		}
	}
	c.Close()
	l.opt.damaged.bound() // a later damage's pass
	for _, f := range []string{filepath.Base(victim), filepath.Base(indexPath(victim))} {
		if found, _ := filepath.Glob(filepath.Join(mnt, "damaged", "*", f)); len(found) != 1 {
			t.Fatalf("%s, found damaged, is not kept in damaged/ after a move on a full disk", f)
		}
	}
}
