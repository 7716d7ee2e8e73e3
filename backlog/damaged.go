package backlog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/rs/zerolog"
)

// damagedManifest, in a directory of damaged/, names the files that were
// found damaged, one per line. The other files there were moved with them
// (the segments after a damaged one, the log of a damaged meta): stream
// the master can resend, which the bound may delete. A directory without
// a manifest is all evidence, kept whole.
const damagedManifest = "DAMAGED"

// damagedManifestEnd is a manifest's last line. A manifest without it was
// cut short (ENOSPC, a crash while it was written) and may miss names of
// damaged files; it then counts as none, so the bound deletes nothing
// there rather than a damaged file it does not name.
const damagedManifestEnd = "# end: the names above are complete"

// damagedArea bounds damaged/: past max bytes, the files moved along with
// damaged ones are deleted, oldest first, each deletion logged; what was
// found damaged is never deleted. Its size is kept for INFO and metrics.
type damagedArea struct {
	root string
	max  int64 // 0: unbounded
	log  zerolog.Logger

	mu   sync.Mutex // one bounding pass at a time
	size atomic.Int64
	over bool // the last pass left damaged/ over max (logged once per episode)
}

func newDamagedArea(root string, max int64, log zerolog.Logger) *damagedArea {
	return &damagedArea{root: root, max: max, log: log}
}

// noteDamaged records, in the manifest of dir (a directory of damaged/),
// which of its files were found damaged, and why.
func noteDamaged(dir, why string, names ...string) error {
	f, err := os.OpenFile(filepath.Join(dir, damagedManifest), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("write the manifest of %s: %w", dir, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %s\n", strings.ReplaceAll(why, "\n", " "))
	for _, n := range names {
		b.WriteString(n + "\n")
	}
	b.WriteString(damagedManifestEnd + "\n")
	_, err = f.WriteString(b.String())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write the manifest of %s: %w", dir, err)
	}
	return nil
}

// readManifest returns the names dir's manifest lists as damaged, or nil
// when dir has no whole manifest (then everything in it counts as damaged).
func readManifest(dir string) map[string]bool {
	data, err := os.ReadFile(filepath.Join(dir, damagedManifest))
	if err != nil || !strings.HasSuffix(string(data), "\n"+damagedManifestEnd+"\n") {
		return nil
	}
	names := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			names[line] = true
		}
	}
	return names
}

// damagedEntry is one file or directory in a directory of damaged/.
type damagedEntry struct {
	path     string
	bytes    int64 // disk blocks used, as the filesystem counts them
	evidence bool  // found damaged, or in a directory without a manifest
}

// Bytes is damaged/'s size as of the last pass.
func (d *damagedArea) Bytes() int64 { return d.size.Load() }

// bound measures damaged/ and, past max, deletes what was only moved
// along, oldest first, until it fits. It returns the size left.
func (d *damagedArea) bound() int64 {
	if d == nil || d.root == "" {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	entries, _ := d.scan()
	total := diskUsage(d.root) // the directories' own blocks too, as du counts them
	for _, e := range entries {
		if d.max <= 0 || total <= d.max {
			break
		}
		if e.evidence {
			continue
		}
		if err := os.RemoveAll(e.path); err != nil {
			d.log.Error().Err(err).Str("file", e.path).Msg("cannot delete from damaged/")
			continue
		}
		total -= e.bytes
		d.log.Warn().Str("file", e.path).Int64("bytes", e.bytes).Int64("damaged_bytes", total).Int64("damaged_max_bytes", d.max).
			Msg("deleted from damaged/, past damaged.max_bytes: it was moved there with a damaged file, and is stream the master can resend; what was found damaged is kept")
	}
	d.size.Store(total)
	over := d.max > 0 && total > d.max
	if over && !d.over {
		d.log.Warn().Int64("damaged_bytes", total).Int64("damaged_max_bytes", d.max).Str("dir", d.root).
			Msg("damaged/ is past damaged.max_bytes with files found damaged only, which are never deleted: inspect them and delete them by hand")
	}
	d.over = over
	return total
}

// scan lists damaged/'s entries, oldest directory first, with their sizes.
func (d *damagedArea) scan() ([]damagedEntry, int64) {
	dirs, err := os.ReadDir(d.root)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			d.log.Error().Err(err).Str("dir", d.root).Msg("cannot read damaged/")
		}
		return nil, 0
	}
	sort.Slice(dirs, func(i, j int) bool { return dirs[i].Name() < dirs[j].Name() })
	var out []damagedEntry
	total := int64(0)
	for _, de := range dirs {
		path := filepath.Join(d.root, de.Name())
		if !de.IsDir() {
			n := diskUsage(path)
			out, total = append(out, damagedEntry{path: path, bytes: n, evidence: true}), total+n
			continue
		}
		manifest := readManifest(path)
		files, _ := os.ReadDir(path)
		for _, f := range files {
			p := filepath.Join(path, f.Name())
			n := diskUsage(p)
			total += n
			if f.Name() == damagedManifest {
				continue
			}
			out = append(out, damagedEntry{path: p, bytes: n, evidence: manifest == nil || manifest[f.Name()]})
		}
	}
	return out, total
}

// diskUsage is the space path takes on disk, a directory's contents
// included: a segment moved aside keeps the blocks reserved for it.
func diskUsage(path string) int64 {
	total := int64(0)
	filepath.WalkDir(path, func(_ string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if info, err := e.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				total += st.Blocks * 512
			} else {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

// noteCulprit records that the segment at first was found damaged, so
// that the cut moving it aside marks it as evidence.
func (l *Log) noteCulprit(first int64) {
	l.culpritMu.Lock()
	defer l.culpritMu.Unlock()
	if l.culprits == nil {
		l.culprits = map[int64]bool{}
	}
	l.culprits[first] = true
}

// markCulprits writes the manifest of dir, where segs were just moved:
// the segments found damaged are evidence, the others were moved along.
func (l *Log) markCulprits(dir string, segs []*segment) {
	l.culpritMu.Lock()
	var names []string
	for _, s := range segs {
		if l.culprits[s.first] {
			path := segmentPath(l.dir, s.first)
			names = append(names, filepath.Base(path), filepath.Base(indexPath(path)))
			delete(l.culprits, s.first)
		}
	}
	l.culpritMu.Unlock()
	if err := noteDamaged(dir, "checksum mismatch found in the segments named below; the others were moved along", names...); err != nil {
		l.log.Error().Err(err).Msg("cannot mark the damaged segment in damaged/")
	}
}
