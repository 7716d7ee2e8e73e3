package backlog

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/hdt3213/rdb/crc64jones"
)

// ErrSnapshotDamaged means the stored RDB failed its checksum: it is not
// served, and a fresh one is needed from upstream.
var ErrSnapshotDamaged = errors.New("snapshot damaged")

// SnapshotWriter receives an RDB into a temp file; nothing refers to it until
// the Store adopts it. Its CRC-64 is taken as the bytes arrive.
type SnapshotWriter struct {
	f    *os.File
	size int64
	crc  hash.Hash64
	sync SyncFunc
}

// NewSnapshot starts receiving an RDB.
func (s *Store) NewSnapshot() (*SnapshotWriter, error) {
	f, err := os.CreateTemp(s.dir.Snapshots(), "incoming-*.tmp")
	if err != nil {
		return nil, fmt.Errorf("create snapshot temp file: %w", err)
	}
	return &SnapshotWriter{f: f, crc: crc64jones.New(), sync: s.opt.Log.Sync}, nil
}

func (w *SnapshotWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.size += int64(n)
	w.crc.Write(p[:n])
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
	if err := w.sync(w.f); err != nil {
		w.Abort()
		return nil, fmt.Errorf("fsync snapshot %s: %w", w.f.Name(), err)
	}
	if err := w.f.Close(); err != nil {
		os.Remove(w.f.Name())
		return nil, fmt.Errorf("close snapshot %s: %w", w.f.Name(), err)
	}
	name := fmt.Sprintf("%s-%020d.rdb", replid, offset)
	_, statErr := os.Lstat(filepath.Join(dir, name))
	fresh := errors.Is(statErr, os.ErrNotExist)
	if err := os.Rename(w.f.Name(), filepath.Join(dir, name)); err != nil {
		os.Remove(w.f.Name())
		return nil, fmt.Errorf("rename snapshot to %s: %w", name, err)
	}
	if err := syncDir(dir, w.sync); err != nil {
		// The adoption fails, so no meta will name it; a file of that
		// name that was there before may be named by the current meta.
		if fresh {
			os.Remove(filepath.Join(dir, name))
		}
		return nil, err
	}
	return &SnapshotInfo{File: name, ReplID: replid, Offset: offset, Size: w.size, CRC64: formatCRC64(w.crc.Sum64())}, nil
}

func formatCRC64(v uint64) string { return fmt.Sprintf("%016x", v) }

// checkSnapshot checks the stored RDB against the meta: present, of the
// recorded size, and, with full, of the recorded CRC-64. A meta written
// before the CRC was recorded falls back to the RDB's own trailing CRC-64.
func checkSnapshot(dir string, snap *SnapshotInfo, full bool, pace func(int64) error) error {
	if snap == nil {
		return errors.New("meta names no snapshot")
	}
	path := filepath.Join(dir, snap.File)
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", path, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", path, err)
	}
	if info.Size() != snap.Size {
		return fmt.Errorf("snapshot %s has %d bytes, meta says %d: %w", path, info.Size(), snap.Size, errSnapshotSize)
	}
	if !full {
		return nil
	}
	return checkSnapshotFile(f, path, snap, pace)
}

// checkSnapshotFile checks f, the snapshot snap at path, against the
// meta's CRC-64, or the RDB's own trailer for a meta that predates it.
func checkSnapshotFile(f *os.File, path string, snap *SnapshotInfo, pace func(int64) error) error {
	if snap.CRC64 == "" {
		return checkRDBTrailer(f, path, snap.Size, pace)
	}
	got, err := fileCRC64(f, snap.Size, pace)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", path, err)
	}
	if formatCRC64(got) != snap.CRC64 {
		// An RDB ends with its own CRC-64, so an intact one's CRC-64 over
		// the whole file is 0: say so, or the zeros read as a bad meta.
		how := ""
		if snap.CRC64 == formatCRC64(0) {
			how = " (the CRC-64 of every intact RDB that ends in its own checksum)"
		}
		return fmt.Errorf("snapshot %s: CRC-64 %s, meta says %s%s: %w", path, formatCRC64(got), snap.CRC64, how, ErrSnapshotDamaged)
	}
	return nil
}

var errSnapshotSize = errors.New("wrong size")

// checkRDBTrailer compares an RDB's trailing CRC-64 with its content; a
// zero trailer (rdbchecksum no) cannot be checked.
func checkRDBTrailer(f *os.File, path string, size int64, pace func(int64) error) error {
	if size < 8 {
		return fmt.Errorf("snapshot %s: %d bytes, too short for an RDB: %w", path, size, ErrSnapshotDamaged)
	}
	var tr [8]byte
	if _, err := f.ReadAt(tr[:], size-8); err != nil {
		return fmt.Errorf("snapshot %s: %w", path, err)
	}
	want := binary.LittleEndian.Uint64(tr[:])
	if want == 0 {
		return nil
	}
	got, err := fileCRC64(f, size-8, pace)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", path, err)
	}
	if got != want {
		return fmt.Errorf("snapshot %s: CRC-64 %016x, its trailer says %016x: %w", path, got, want, ErrSnapshotDamaged)
	}
	return nil
}

func fileCRC64(f *os.File, n int64, pace func(int64) error) (uint64, error) {
	h := crc64jones.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < n; {
		b := buf[:min(int64(len(buf)), n-off)]
		if pace != nil {
			if err := pace(int64(len(b))); err != nil {
				return 0, err
			}
		}
		if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("read at %d: %w", off, err)
		}
		h.Write(b)
		off += int64(len(b))
	}
	return h.Sum64(), nil
}

// removeUnnamedSnapshot removes a snapshot file just stored for an
// adoption that failed, unless the meta names a file of that name (the
// same replid and offset stored before).
func (s *Store) removeUnnamedSnapshot(file string) {
	s.mu.RLock()
	snaps := s.meta.Snapshots()
	s.mu.RUnlock()
	for _, o := range snaps {
		if o.File == file {
			return
		}
	}
	os.Remove(s.dir.Snapshot(file))
}

// Reset starts a new history after an upstream +FULLRESYNC <replid> <offset>:
// the RDB in w becomes the snapshot and a new, empty log generation begins at
// offset+1. The meta write is the commit point; whatever a crash leaves of
// the old or new generation is removed at the next Open.
func (s *Store) Reset(replid string, offset int64, w *SnapshotWriter) error {
	s.writeMu.Lock()
	defer s.unlockWrite()
	if s.closed {
		w.Abort()
		return ErrClosed
	}
	snap, err := w.commit(s.dir.Snapshots(), replid, offset)
	if err != nil {
		return s.diskError(err)
	}
	s.mu.RLock()
	epoch := s.meta.Epoch + 1
	s.mu.RUnlock()
	l, err := OpenLog(s.dir.LogDir(epoch), offset+1, s.opt.Log)
	if err != nil {
		// No meta names the RDB nor this generation yet: leaving them
		// until the next Open would keep an RDB's worth of a disk that
		// may just have run full.
		os.RemoveAll(s.dir.LogDir(epoch))
		s.removeUnnamedSnapshot(snap.File)
		return s.diskError(fmt.Errorf("open the new history's log: %w", err))
	}
	m := Meta{ReplID: replid, ReplID2: NoReplID, SecondOffset: -1, Epoch: epoch, LogStart: offset + 1, Snapshot: snap}
	if err := writeMeta(s.dir.Meta(), m, s.opt.Log.Sync); err != nil {
		l.Remove()
		s.removeUnnamedSnapshot(snap.File)
		return s.diskError(fmt.Errorf("persist new history: %w", err))
	}
	s.mu.Lock()
	old, oldSnaps := s.log, s.meta.Snapshots()
	s.meta, s.log = m, l
	s.mu.Unlock()
	if old != nil {
		old.Remove()
	}
	s.removeSnapshots(oldSnaps, snap.File) // they cannot continue in the new log
	return nil
}

// OpenSnapshot opens the current snapshot for a full sync. The handle stays
// valid even if a newer snapshot replaces it meanwhile. The first time a
// snapshot is served in this process its CRC-64 is checked whole, before a
// byte goes out; a damaged one is moved aside and ErrSnapshotDamaged
// returned until a fresh one is adopted. Damage after that check is caught
// by the send itself (SnapshotReader), at every full sync.
func (s *Store) OpenSnapshot() (*os.File, SnapshotInfo, error) {
	s.mu.RLock()
	snap := s.meta.Snapshot
	has := s.log != nil
	s.mu.RUnlock()
	if !has || snap == nil {
		return nil, SnapshotInfo{}, fmt.Errorf("no snapshot yet")
	}
	if err := s.verifySnapshotOnce(*snap); err != nil {
		return nil, SnapshotInfo{}, err
	}
	path := s.dir.Snapshot(snap.File)
	f, err := os.Open(path)
	if err != nil {
		return nil, SnapshotInfo{}, fmt.Errorf("open snapshot %s: %w", path, err)
	}
	return f, *snap, nil
}

// verifySnapshotOnce checks snap's CRC-64 unless this process already did:
// a replica then waits rather than be sent an RDB that stops short of its
// end. It is no guarantee by itself, as the file may change after it.
func (s *Store) verifySnapshotOnce(snap SnapshotInfo) error {
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	switch snap.File {
	case s.snapVerified:
		return nil
	case s.snapDamaged:
		return fmt.Errorf("snapshot %s: %w; waiting for a fresh one from upstream", snap.File, ErrSnapshotDamaged)
	}
	err := checkSnapshot(s.dir.Snapshots(), &snap, true, nil)
	if err == nil {
		s.snapVerified = snap.File
		return nil
	}
	if !errors.Is(err, ErrSnapshotDamaged) && !errors.Is(err, errSnapshotSize) {
		return err // replaced meanwhile, or unreadable: not evidence of damage
	}
	s.snapshotDamagedLocked(snap, err)
	return fmt.Errorf("%w: %w", ErrSnapshotDamaged, err)
}

// snapshotDamagedLocked moves a damaged snapshot aside; the caller holds snapMu.
func (s *Store) snapshotDamagedLocked(snap SnapshotInfo, cause error) {
	s.snapDamaged = snap.File
	if s.snapVerified == snap.File {
		s.snapVerified = ""
	}
	path := s.dir.Snapshot(snap.File)
	dir, err := moveAside(s.dir.Damaged(), path)
	if err != nil {
		s.opt.Logger.Error().Err(err).Str("file", path).Msg("cannot move the damaged snapshot aside")
	}
	s.opt.Logger.Error().Err(cause).Str("file", path).Str("moved_to", dir).
		Msg("stored snapshot damaged: it is not served; replicas needing a full sync wait for a fresh one from upstream")
}

// AdoptSnapshot replaces the snapshot with a fresher RDB of the same
// history, taken at offset. It is accepted only if the stream continues in
// the log (offset+1 in [first, end]), so a full sync from it is gapless;
// retention may then trim below it. The meta write happens outside mu, so
// appends and PSYNC decisions never wait on it.
func (s *Store) AdoptSnapshot(replid string, offset int64, w *SnapshotWriter) error {
	s.writeMu.Lock()
	defer s.unlockWrite()
	st := s.State()
	switch {
	case s.closed:
		w.Abort()
		return ErrClosed
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
	snap, err := w.commit(s.dir.Snapshots(), replid, offset)
	if err != nil {
		return s.diskError(err)
	}
	// writeMu keeps every other meta writer out, so meta cannot change
	// between this read and the swap below.
	s.mu.RLock()
	m := s.meta
	s.mu.RUnlock()
	var dropped []SnapshotInfo
	m.History, dropped = keepHistory(m.Snapshots(), st.First, s.opt.SnapshotKeep)
	m.Snapshot = snap
	if err := writeMeta(s.dir.Meta(), m, s.opt.Log.Sync); err != nil {
		s.removeUnnamedSnapshot(snap.File)
		return s.diskError(fmt.Errorf("persist new snapshot: %w", err))
	}
	s.mu.Lock()
	s.meta = m
	s.mu.Unlock()
	s.removeSnapshots(dropped, snap.File)
	return nil
}

// removeSnapshots deletes the files of snaps but the one named keep.
func (s *Store) removeSnapshots(snaps []SnapshotInfo, keep string) {
	for _, o := range snaps {
		if o.File != keep {
			os.Remove(s.dir.Snapshot(o.File))
		}
	}
}

// keepHistory splits the snapshots that become history when a newer one is
// adopted: at most keep-1 of the newest that still continue in the log
// (offset+1 >= first) are kept; the rest are returned to be deleted.
func keepHistory(snaps []SnapshotInfo, first int64, keep int) (kept, dropped []SnapshotInfo) {
	for _, o := range snaps {
		if o.Offset+1 >= first {
			kept = append(kept, o)
		} else {
			dropped = append(dropped, o)
		}
	}
	if n := len(kept) - max(keep-1, 0); n > 0 {
		dropped = append(dropped, kept[:n]...)
		kept = kept[n:]
	}
	return kept, dropped
}

// pruneHistory is retention's hook: it deletes the kept snapshots whose
// stream retention removed, as a snapshot is kept only while the log
// continues it. It runs on the append path, so it never waits for writeMu:
// AdoptSnapshot holds it across the fsync of a whole RDB, and the upstream
// reader would stall for as long. A busy writeMu's holder prunes instead,
// as it lets go.
func (s *Store) pruneHistory(int64) {
	s.prunePending.Store(true)
	s.prunePendingHistory()
}

// prunePendingHistory prunes while a prune is pending and writeMu is free.
// A prune set pending while another goroutine holds writeMu is seen by that
// holder in unlockWrite, after its Unlock.
func (s *Store) prunePendingHistory() {
	for s.prunePending.Load() {
		if !s.writeMu.TryLock() {
			return
		}
		if s.prunePending.Swap(false) {
			s.pruneHistoryLocked()
		}
		s.writeMu.Unlock()
	}
}

// unlockWrite releases writeMu and runs a prune that retention asked for
// meanwhile.
func (s *Store) unlockWrite() {
	s.writeMu.Unlock()
	s.prunePendingHistory()
}

// pruneHistoryLocked drops history entries below the log's first offset;
// the meta is written before any file goes. The caller holds writeMu.
func (s *Store) pruneHistoryLocked() {
	if s.closed {
		return
	}
	s.mu.RLock()
	m, l := s.meta, s.log
	s.mu.RUnlock()
	if l == nil {
		return
	}
	first, _ := l.Bounds()
	kept, dropped := keepHistory(m.History, first, len(m.History)+1)
	if len(dropped) == 0 {
		return
	}
	m.History = kept
	if err := writeMeta(s.dir.Meta(), m, s.opt.Log.Sync); err != nil {
		s.diskError(fmt.Errorf("persist snapshot history after retention: %w", err))
		return
	}
	s.mu.Lock()
	s.meta = m
	s.mu.Unlock()
	for _, o := range dropped {
		os.Remove(s.dir.Snapshot(o.File))
		s.opt.Logger.Info().Str("file", o.File).Int64("offset", o.Offset).Int64("backlog_first", first).
			Msg("kept snapshot deleted: retention removed the stream that continues it")
	}
}

// presentHistory drops, at start, history entries whose file is missing or
// resized; a restore checks the CRC-64 of the one it uses.
func (s *Store) presentHistory(h []SnapshotInfo) []SnapshotInfo {
	var out []SnapshotInfo
	for _, o := range h {
		if err := checkSnapshot(s.dir.Snapshots(), &o, false, nil); err != nil {
			s.opt.Logger.Warn().Err(err).Str("file", o.File).Msg("kept snapshot unusable; dropped from the history")
			continue
		}
		out = append(out, o)
	}
	return out
}

// keeps says whether name is a snapshot file the meta names.
func (s *Store) keeps(name string) bool {
	for _, o := range s.meta.Snapshots() {
		if o.File == name {
			return true
		}
	}
	return false
}

// scrubSnapshot rechecks the current snapshot's CRC-64 at the scrub's pace.
func (s *Store) scrubSnapshot(pace func(int64) error) error {
	s.mu.RLock()
	snap := s.meta.Snapshot
	has := s.log != nil
	s.mu.RUnlock()
	if !has || snap == nil {
		return nil
	}
	err := checkSnapshot(s.dir.Snapshots(), snap, true, pace)
	if err == nil || (!errors.Is(err, ErrSnapshotDamaged) && !errors.Is(err, errSnapshotSize)) {
		if errors.Is(err, os.ErrNotExist) {
			return nil // replaced meanwhile, or already moved aside
		}
		return err
	}
	s.snapMu.Lock()
	defer s.snapMu.Unlock()
	if s.snapDamaged != snap.File {
		s.snapshotDamagedLocked(*snap, err)
	}
	return nil
}

// snapshotHeldBytes is what a full sync holds back until the running CRC-64
// of everything sent matches the meta's: the RDB's own CRC-64 trailer. A
// Redis replica that loads from disk loads nothing it has not received
// whole, and one that loads from the socket does not accept an RDB without
// its trailer, so a snapshot damaged at any time before or during a send
// never reaches a replica complete.
const snapshotHeldBytes = 8

// SnapshotReader reads the snapshot for one full sync. Every byte it
// returns went through a running CRC-64, and the last snapshotHeldBytes
// come only once the CRC-64 of the whole file, as read, matches the one
// recorded when the RDB was received. A mismatch returns
// ErrSnapshotDamaged and moves the snapshot aside, as the scrub does.
type SnapshotReader struct {
	store *Store
	f     *os.File
	snap  SnapshotInfo
	crc   hash.Hash64
	off   int64
}

// NewSnapshotReader reads f, opened by OpenSnapshot for snap, from its start.
func (s *Store) NewSnapshotReader(f *os.File, snap SnapshotInfo) *SnapshotReader {
	return &SnapshotReader{store: s, f: f, snap: snap, crc: crc64jones.New()}
}

// Read returns the next bytes of the snapshot, never the held-back tail
// together with the bytes before it.
func (r *SnapshotReader) Read(p []byte) (int, error) {
	size := r.snap.Size
	if r.off >= size {
		return 0, io.EOF
	}
	held := max(size-snapshotHeldBytes, 0)
	last := r.off >= held
	if !last {
		p = p[:min(int64(len(p)), held-r.off)]
	} else if int64(len(p)) < size-r.off {
		return 0, fmt.Errorf("snapshot %s: a read of %d bytes cannot take its last %d at once", r.snap.File, len(p), size-r.off)
	}
	p = p[:min(int64(len(p)), size-r.off)]
	n, err := r.f.ReadAt(p, r.off)
	if n < len(p) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // shorter than the meta says: cut under us
		}
		return 0, fmt.Errorf("read snapshot %s at %d: %w", r.snap.File, r.off, err)
	}
	if last {
		if err := r.check(p[:n]); err != nil {
			return 0, err
		}
	} else {
		r.crc.Write(p[:n])
	}
	r.off += int64(n)
	return n, nil
}

// check compares the CRC-64 of everything read with tail appended against
// the meta's (or, for a meta that predates it, the RDB's own trailer).
func (r *SnapshotReader) check(tail []byte) error {
	var got, want uint64
	before := r.crc.Sum64()
	r.crc.Write(tail)
	switch {
	case r.snap.CRC64 != "":
		got = r.crc.Sum64()
		v, err := strconv.ParseUint(r.snap.CRC64, 16, 64)
		if err != nil {
			return fmt.Errorf("snapshot %s: meta CRC-64 %q: %w", r.snap.File, r.snap.CRC64, err)
		}
		want = v
	case len(tail) == snapshotHeldBytes:
		got, want = before, binary.LittleEndian.Uint64(tail)
		if want == 0 {
			return nil // rdbchecksum no: nothing to check against
		}
	default:
		return nil
	}
	if got == want {
		return nil
	}
	err := fmt.Errorf("snapshot %s: CRC-64 of the bytes sent %016x, recorded %016x: %w", r.store.dir.Snapshot(r.snap.File), got, want, ErrSnapshotDamaged)
	r.damaged(fmt.Errorf("found while sending it, its last %d bytes held back: %w", len(tail), err))
	return err
}

// Verify checks the whole snapshot, as read now, before a byte of it is
// sent. Holding back its last bytes protects a replica that loads from
// disk only: one with repl-diskless-load parses the RDB as it arrives and
// exits on a corrupt one ("Terminating server after rdb file reading
// failure") long before the trailer is due. Damage arriving between this
// check and the send is still caught by the held-back bytes. It stops
// early when ctx ends (the replica's session closes).
func (r *SnapshotReader) Verify(ctx context.Context) error {
	stop := func(int64) error { return ctx.Err() }
	err := checkSnapshotFile(r.f, r.store.dir.Snapshot(r.snap.File), &r.snap, stop)
	if errors.Is(err, ErrSnapshotDamaged) {
		r.damaged(fmt.Errorf("found right before sending it, nothing of it sent: %w", err))
	}
	return err
}

// damaged moves the snapshot aside, once, as the scrub does.
func (r *SnapshotReader) damaged(cause error) {
	r.store.snapMu.Lock()
	defer r.store.snapMu.Unlock()
	if r.store.snapDamaged != r.snap.File {
		r.store.snapshotDamagedLocked(r.snap, cause)
	}
}
