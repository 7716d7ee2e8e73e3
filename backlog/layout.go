package backlog

import (
	"path/filepath"
	"strconv"
)

// Layout is a data dir, and the one place that names what lives in it:
// the store, verify, restore, inspect and the metrics find their files
// through it.
type Layout string

func (d Layout) Meta() string      { return filepath.Join(string(d), "meta.json") }    // the replication meta: the commit point
func (d Layout) Lock() string      { return filepath.Join(string(d), "LOCK") }         // locked by the process that owns the dir
func (d Layout) Refresh() string   { return filepath.Join(string(d), "refresh.json") } // the record of snapshot refreshes
func (d Layout) Damaged() string   { return filepath.Join(string(d), "damaged") }      // what was found damaged, moved aside
func (d Layout) Converted() string { return filepath.Join(string(d), "converted") }    // snapshots converted for older replicas
func (d Layout) Snapshots() string { return filepath.Join(string(d), "snapshot") }     // the snapshot files
func (d Layout) Logs() string      { return filepath.Join(string(d), "log") }          // one directory per log generation

// Snapshot is the snapshot file named file (SnapshotInfo.File).
func (d Layout) Snapshot(file string) string { return filepath.Join(d.Snapshots(), file) }

// LogDir is the directory of the log generation epoch.
func (d Layout) LogDir(epoch uint64) string {
	return filepath.Join(d.Logs(), strconv.FormatUint(epoch, 10))
}
