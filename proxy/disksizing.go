package proxy

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/replproxy/replproxy/backlog"
)

// damagedMaxBytes is the bound of damaged/ (damaged.max_bytes, by default
// one backlog.max_bytes).
func damagedMaxBytes(cfg Config) int64 {
	if cfg.Damaged.MaxBytes > 0 {
		return int64(cfg.Damaged.MaxBytes)
	}
	return int64(cfg.Backlog.MaxBytes)
}

// DiskSizeWarnings says when a data dir's filesystem is smaller than what
// the configuration may put on it: backlog.max_bytes, the snapshot hold,
// damaged.max_bytes, two segments (one is made ahead of need) and two
// RDBs (a full sync writes the new one beside the old). The RDB's size is
// the stored snapshot's, when the data dir has one.
func DiskSizeWarnings(cfg Config) []string {
	dirs := []string{cfg.DataDir}
	if len(cfg.Pipelines) > 0 {
		dirs = dirs[:0]
		for _, p := range cfg.Pipelines {
			dirs = append(dirs, filepath.Join(cfg.DataDir, p.Name))
		}
	}
	var out []string
	for _, dir := range dirs {
		if w := diskSizeWarning(cfg, dir); w != "" {
			out = append(out, w)
		}
	}
	return out
}

func diskSizeWarning(cfg Config, dir string) string {
	size, err := filesystemSize(dir)
	if err != nil {
		return ""
	}
	rdb, rdbNote := int64(0), "no snapshot stored yet, so the RDBs count 0"
	if m, err := backlog.ReadMeta(dir); err == nil && m.Snapshot != nil {
		rdb, rdbNote = m.Snapshot.Size, fmt.Sprintf("RDB %d bytes, the stored snapshot's size", m.Snapshot.Size)
	}
	need := int64(cfg.Backlog.MaxBytes) + holdMaxBytes(cfg) + damagedMaxBytes(cfg) + 2*int64(cfg.Backlog.SegmentBytes) + 2*rdb
	if size >= need {
		return ""
	}
	return fmt.Sprintf("the filesystem of data dir %s holds %d bytes, less than the %d this configuration may use: backlog.max_bytes %d + snapshot hold %d + damaged.max_bytes %d + two segments of %d + two RDBs (%s); a full disk stops the upstream link until there is room",
		dir, size, need, cfg.Backlog.MaxBytes, holdMaxBytes(cfg), damagedMaxBytes(cfg), cfg.Backlog.SegmentBytes, rdbNote)
}

// filesystemSize is the size of the filesystem dir is on, or will be on:
// a data dir not yet created is measured at its nearest existing parent.
func filesystemSize(dir string) (int64, error) {
	for {
		var fs unix.Statfs_t
		err := unix.Statfs(dir, &fs)
		if err == nil {
			return int64(fs.Blocks) * int64(fs.Bsize), nil
		}
		parent := filepath.Dir(dir)
		if !os.IsNotExist(err) || parent == dir {
			return 0, fmt.Errorf("statfs %s: %w", dir, err)
		}
		dir = parent
	}
}

// warnDiskSize logs DiskSizeWarnings' finding for this proxy's data dir.
func (p *Proxy) warnDiskSize() {
	if w := diskSizeWarning(p.cfg, p.cfg.DataDir); w != "" {
		p.log.Warn().Msg(w)
	}
}
