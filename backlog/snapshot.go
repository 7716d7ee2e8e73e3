package backlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// SnapshotWriter receives an RDB into a temp file; nothing refers to it until
// the Store adopts it.
type SnapshotWriter struct {
	f    *os.File
	size int64
}

// NewSnapshot starts receiving an RDB.
func (s *Store) NewSnapshot() (*SnapshotWriter, error) {
	f, err := os.CreateTemp(filepath.Join(s.dir, "snapshot"), "incoming-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("create snapshot temp file: %w", err)
	}
	return &SnapshotWriter{f: f}, nil
}

func (w *SnapshotWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.size += int64(n)
	if err != nil {
		return n, fmt.Errorf("write snapshot %s: %w", w.f.Name(), err)
	}
	return n, nil
}

// Size is the number of RDB bytes received.
func (w *SnapshotWriter) Size() int64 { return w.size }

// Path is the temp file's path, for validation before adoption.
func (w *SnapshotWriter) Path() string { return w.f.Name() }

// Abort discards the incoming RDB.
func (w *SnapshotWriter) Abort() {
	w.f.Close()
	os.Remove(w.f.Name())
}

// commit makes the RDB durable under its final name.
func (w *SnapshotWriter) commit(dir, replid string, offset int64) (*SnapshotInfo, error) {
	if err := w.f.Sync(); err != nil {
		w.Abort()
		return nil, fmt.Errorf("fsync snapshot %s: %w", w.f.Name(), err)
	}
	if err := w.f.Close(); err != nil {
		os.Remove(w.f.Name())
		return nil, fmt.Errorf("close snapshot %s: %w", w.f.Name(), err)
	}
	name := fmt.Sprintf("%s-%020d.rdb", replid, offset)
	if err := os.Rename(w.f.Name(), filepath.Join(dir, name)); err != nil {
		os.Remove(w.f.Name())
		return nil, fmt.Errorf("rename snapshot to %s: %w", name, err)
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	return &SnapshotInfo{File: name, ReplID: replid, Offset: offset, Size: w.size}, nil
}

// Reset starts a new history after an upstream +FULLRESYNC <replid> <offset>:
// the RDB in w becomes the snapshot and a new, empty log generation begins at
// offset+1. The meta write is the commit point; whatever a crash leaves of
// the old or new generation is removed at the next Open.
func (s *Store) Reset(replid string, offset int64, w *SnapshotWriter) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	snapDir := filepath.Join(s.dir, "snapshot")
	snap, err := w.commit(snapDir, replid, offset)
	if err != nil {
		return err
	}
	s.mu.Lock()
	epoch := s.meta.Epoch + 1
	s.mu.Unlock()
	l, err := OpenLog(s.logDir(epoch), offset+1, s.opt.Log)
	if err != nil {
		return err
	}
	m := Meta{ReplID: replid, ReplID2: NoReplID, SecondOffset: -1, Epoch: epoch, LogStart: offset + 1, Snapshot: snap}
	if err := writeMeta(s.metaPath(), m); err != nil {
		l.Remove()
		os.Remove(filepath.Join(snapDir, snap.File))
		return fmt.Errorf("persist new history: %w", err)
	}
	s.mu.Lock()
	old, oldSnap := s.log, s.meta.Snapshot
	s.meta, s.log = m, l
	s.mu.Unlock()
	if old != nil {
		old.Remove()
	}
	if oldSnap != nil && oldSnap.File != snap.File {
		os.Remove(filepath.Join(snapDir, oldSnap.File))
	}
	return nil
}

// OpenSnapshot opens the current snapshot for a full sync. The handle stays
// valid even if a newer snapshot replaces it meanwhile.
func (s *Store) OpenSnapshot() (*os.File, SnapshotInfo, error) {
	s.mu.RLock()
	snap := s.meta.Snapshot
	has := s.log != nil
	s.mu.RUnlock()
	if !has || snap == nil {
		return nil, SnapshotInfo{}, fmt.Errorf("no snapshot yet")
	}
	path := filepath.Join(s.dir, "snapshot", snap.File)
	f, err := os.Open(path)
	if err != nil {
		return nil, SnapshotInfo{}, fmt.Errorf("open snapshot %s: %w", path, err)
	}
	return f, *snap, nil
}

// AdoptSnapshot replaces the snapshot with a fresher RDB of the same
// history, taken at offset. It is accepted only if the stream continues in
// the log (offset+1 in [first, end]), so a full sync from it is gapless;
// retention may then trim below it.
func (s *Store) AdoptSnapshot(replid string, offset int64, w *SnapshotWriter) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	st := s.State()
	switch {
	case !st.HasHistory:
		w.Abort()
		return errors.New("adopt snapshot: no history yet")
	case replid != st.ReplID:
		w.Abort()
		return fmt.Errorf("adopt snapshot: its replid %s is not the current history's %s", replid, st.ReplID)
	case offset+1 < st.First || offset+1 > st.End:
		w.Abort()
		return fmt.Errorf("adopt snapshot: offset %d is outside the stored backlog [%d, %d]", offset, st.First-1, st.End-1)
	case st.Snapshot != nil && offset <= st.Snapshot.Offset:
		w.Abort()
		return fmt.Errorf("adopt snapshot: offset %d is not newer than the current snapshot's %d (an upstream replproxy serves its own)", offset, st.Snapshot.Offset)
	}
	snapDir := filepath.Join(s.dir, "snapshot")
	snap, err := w.commit(snapDir, replid, offset)
	if err != nil {
		return err
	}
	s.mu.Lock()
	m := s.meta
	old := m.Snapshot
	m.Snapshot = snap
	if err := writeMeta(s.metaPath(), m); err != nil {
		s.mu.Unlock()
		os.Remove(filepath.Join(snapDir, snap.File))
		return fmt.Errorf("persist new snapshot: %w", err)
	}
	s.meta = m
	s.mu.Unlock()
	if old != nil && old.File != snap.File {
		os.Remove(filepath.Join(snapDir, old.File))
	}
	return nil
}
