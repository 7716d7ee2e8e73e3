package backlog

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// Issue 21, point 4: damage after damage, each moving a segment and all
// those after it into damaged/, keeps damaged/ within damaged.max_bytes:
// the segments moved only along are deleted, oldest first, each deletion
// logged, while every segment found damaged stays, with its index. The
// log goes on after each cut. Before the bound, damaged/ grew by the whole
// rest of the log at every damage.
func TestDamagedStaysWithinItsBound(t *testing.T) {
	dir := t.TempDir()
	logs := &logBuffer{}
	const seg, max = 64 << 10, 400 << 10
	opt := Options{
		Log:             LogOptions{SegmentBytes: seg, MaxBytes: 1 << 30, Fsync: FsyncEverySec},
		DamagedMaxBytes: max,
		Logger:          zerolog.New(logs),
	}
	s := newStore(t, dir, opt, 0)
	defer s.Close()
	var culprits []string
	for round := 0; round < 4; round++ {
		s.Resume()
		for i := 0; i < 8; i++ {
			if err := s.Append(pattern(seg, byte(round*8+i))); err != nil {
				t.Fatalf("round %d: append: %v", round, err)
			}
		}
		l := s.Log()
		segs, _ := filepath.Glob(filepath.Join(l.dir, "*.seg"))
		sort.Strings(segs)
		victim := segs[len(segs)-4]
		flipByte(t, victim, 1000)
		first, _ := l.Bounds()
		c, err := l.NewCursor(first)
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
				t.Fatalf("round %d: send: %d %v; the flipped byte was not found", round, n, err)
			}
		}
		c.Close()
		culprits = append(culprits, filepath.Base(victim))
		used := diskUsage(filepath.Join(dir, "damaged"))
		t.Logf("round %d: damaged/ uses %d bytes on disk (bound %d), INFO says %d", round, used, max, s.DamagedBytes())
		if used > max || s.DamagedBytes() != used {
			t.Fatalf("round %d: damaged/ uses %d bytes, reported %d, bound %d", round, used, s.DamagedBytes(), max)
		}
		for _, name := range culprits {
			for _, f := range []string{name, strings.TrimSuffix(name, ".seg") + ".idx"} {
				if found, _ := filepath.Glob(filepath.Join(dir, "damaged", "*", f)); len(found) != 1 {
					t.Fatalf("round %d: %s, found damaged, is not kept in damaged/ (%v)", round, f, found)
				}
			}
		}
	}
	if n := strings.Count(logs.String(), "deleted from damaged/"); n == 0 {
		t.Fatalf("no deletion logged:\n%s", logs.String())
	}
	if err := s.Append([]byte("after the last cut")); err != nil && !errors.Is(err, ErrRewound) {
		t.Fatalf("append after the damage: %v", err)
	}
	s.Resume()
	if err := s.Append([]byte("after the last cut")); err != nil {
		t.Fatalf("append after resuming: %v", err)
	}
}

// Past the bound with nothing but evidence, nothing is deleted: the
// operator is told instead.
func TestDamagedKeepsEvidenceOverItsBound(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "damaged")
	logs := &logBuffer{}
	aside, err := asideDir(root)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(aside, "a.seg"), make([]byte, 64<<10), 0o600)
	os.WriteFile(filepath.Join(aside, "b.seg"), make([]byte, 64<<10), 0o600)
	noteDamaged(aside, "test", "a.seg")
	old, _ := asideDir(root) // no manifest: all of it is evidence
	os.WriteFile(filepath.Join(old, "meta.json"), make([]byte, 64<<10), 0o600)
	d := newDamagedArea(root, 16<<10, zerolog.New(logs))
	d.bound()
	if _, err := os.Stat(filepath.Join(aside, "b.seg")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("b.seg, moved along, was not deleted past the bound: %v", err)
	}
	for _, p := range []string{filepath.Join(aside, "a.seg"), filepath.Join(old, "meta.json")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("evidence deleted: %v", err)
		}
	}
	if !strings.Contains(logs.String(), "past damaged.max_bytes with files found damaged only") {
		t.Fatalf("no warning that damaged/ stays over its bound:\n%s", logs.String())
	}
}

// A manifest cut short (ENOSPC or a crash while it was written: created,
// then nothing or part of its lines) names fewer damaged files than there
// are, or none; the bound then took the damaged segment itself for stream
// moved along and deleted it. A manifest that is not whole now counts as
// none: everything in its directory is kept.
func TestDamagedManifestCutShortKeepsAll(t *testing.T) {
	for name, content := range map[string]string{
		"empty":           "",
		"header only":     "# checksum mismatch\n",
		"index name lost": "# checksum mismatch\n00000000000000001000.seg\n",
		"name cut":        "# checksum mismatch\n0000000000000000",
	} {
		t.Run(name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "damaged")
			aside, err := asideDir(root)
			if err != nil {
				t.Fatal(err)
			}
			files := []string{"00000000000000001000.seg", "00000000000000001000.idx", "00000000000000002000.seg"}
			for _, f := range files {
				os.WriteFile(filepath.Join(aside, f), make([]byte, 64<<10), 0o600)
			}
			os.WriteFile(filepath.Join(aside, damagedManifest), []byte(content), 0o600)
			logs := &logBuffer{}
			newDamagedArea(root, 16<<10, zerolog.New(logs)).bound()
			for _, f := range files {
				if _, err := os.Stat(filepath.Join(aside, f)); err != nil {
					t.Fatalf("%s deleted under a manifest cut short (%q): %v\n%s", f, content, err, logs.String())
				}
			}
		})
	}
}

// Whole manifests written by noteDamaged still let the bound delete what
// was moved along, including one that names nothing (the segments after
// one repaired in place).
func TestDamagedWholeManifestStillBounds(t *testing.T) {
	root := filepath.Join(t.TempDir(), "damaged")
	aside, _ := asideDir(root)
	os.WriteFile(filepath.Join(aside, "a.seg"), make([]byte, 64<<10), 0o600)
	if err := noteDamaged(aside, "follows a damaged segment"); err != nil {
		t.Fatal(err)
	}
	newDamagedArea(root, 16<<10, zerolog.New(io.Discard)).bound()
	if _, err := os.Stat(filepath.Join(aside, "a.seg")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a.seg, moved along under a whole manifest naming nothing, was not deleted past the bound: %v", err)
	}
}
