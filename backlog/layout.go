package backlog

import (
	"path/filepath"
	"strconv"
)

// Layout is a data dir, and the one place that names what lives in it:
// the store, verify, restore, inspect and the metrics all find their files
// through it.
type Layout string

// Meta is the replication meta file, the store's commit point.
func (d Layout) Meta() string { return d.join("meta.json") }

// Lock is the file locked while a process owns the data dir.
func (d Layout) Lock() string { return d.join("LOCK") }

// Snapshots is the directory of the snapshot files.
func (d Layout) Snapshots() string { return d.join("snapshot") }

// Snapshot is the path of the snapshot file named file (SnapshotInfo.File).
func (d Layout) Snapshot(file string) string { return d.join("snapshot", file) }

// Logs is the directory of the log generations.
func (d Layout) Logs() string { return d.join("log") }

// LogDir is the directory of the log generation epoch.
func (d Layout) LogDir(epoch uint64) string {
	return d.join("log", strconv.FormatUint(epoch, 10))
}

// Damaged is where what was found damaged is moved aside.
func (d Layout) Damaged() string { return d.join("damaged") }

// Converted holds snapshots converted for older replicas.
func (d Layout) Converted() string { return d.join("converted") }

// Refresh is the record of the last snapshot refresh.
func (d Layout) Refresh() string { return d.join("refresh.json") }

func (d Layout) join(names ...string) string {
	return filepath.Join(append([]string{string(d)}, names...)...)
}
