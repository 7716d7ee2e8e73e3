package backlog

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Options configure a Store.
type Options struct {
	Log    LogOptions
	Logger zerolog.Logger
}

// State is one consistent view of the replication position.
type State struct {
	HasHistory   bool // false until the first full sync from upstream
	ReplID       string
	ReplID2      string
	SecondOffset int64
	First        int64 // first retained offset
	End          int64 // next offset to be appended: master_repl_offset is End-1
	Durable      int64 // end offset durable under the fsync policy
	Snapshot     *SnapshotInfo
	Epoch        uint64
}

// MasterReplOffset is the offset as Redis reports it: the last byte held.
func (s State) MasterReplOffset() int64 { return s.End - 1 }

// Store is the proxy's replication state on disk: the meta file, the current
// log generation and the snapshot. The upstream link is its only writer.
type Store struct {
	dir  string
	opt  Options
	lock *os.File

	// writeMu serializes the meta writers (Reset, AdoptSnapshot, ShiftID)
	// across their whole validate, write and swap; mu guards the fields.
	writeMu sync.Mutex
	mu      sync.RWMutex
	meta    Meta
	log     *Log // nil until there is a history
}

// Open opens (or creates) the store in dir. Damage is never served: a corrupt
// meta file or a missing snapshot is moved aside, logged with its path, and
// the store starts without history, so the proxy full-syncs from upstream.
func Open(dir string, opt Options) (*Store, error) {
	for _, d := range []string{dir, filepath.Join(dir, "snapshot"), filepath.Join(dir, "log")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	opt.Log.Logger = opt.Logger
	s := &Store{dir: dir, opt: opt, lock: lock}
	s.opt.Log.Hold = s.snapshotNeeds
	if err := s.load(); err != nil {
		lock.Close()
		return nil, err
	}
	s.removeStale()
	return s, nil
}

func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "LOCK")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir %s is in use by another replproxy (lock %s): %w", dir, path, err)
	}
	return f, nil
}

func (s *Store) metaPath() string { return filepath.Join(s.dir, "meta.json") }

func (s *Store) logDir(epoch uint64) string {
	return filepath.Join(s.dir, "log", strconv.FormatUint(epoch, 10))
}

func (s *Store) load() error {
	m, err := readMeta(s.metaPath())
	switch {
	case errors.Is(err, ErrNoMeta):
		s.meta = freshMeta(0)
		return nil
	case errors.Is(err, ErrCorrupt):
		s.quarantine(s.metaPath(), err)
		s.meta = freshMeta(0)
		return nil
	case err != nil:
		return err // unreadable, not damaged: the operator must fix it, nothing is thrown away
	}
	if err := checkSnapshot(filepath.Join(s.dir, "snapshot"), m.Snapshot); err != nil {
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, errSnapshotSize) && m.Snapshot != nil {
			return err
		}
		s.opt.Logger.Error().Err(err).Msg("snapshot unusable; the proxy will full-sync from its master")
		s.meta = freshMeta(m.Epoch + 1)
		return nil
	}
	l, err := OpenLog(s.logDir(m.Epoch), m.LogStart, s.opt.Log)
	if err != nil {
		return err
	}
	s.meta, s.log = m, l
	first, end := l.Bounds()
	s.opt.Logger.Info().Str("replid", m.ReplID).Int64("first", first).Int64("end", end).
		Int64("snapshot_offset", m.Snapshot.Offset).Msg("backlog recovered")
	return nil
}

func freshMeta(epoch uint64) Meta {
	return Meta{ReplID: RandomReplID(), ReplID2: NoReplID, SecondOffset: -1, Epoch: epoch, LogStart: 1}
}

// quarantine moves a damaged file aside so an operator can inspect it.
func (s *Store) quarantine(path string, cause error) {
	aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
	if err := os.Rename(path, aside); err != nil {
		s.opt.Logger.Error().Err(err).Str("file", path).Msg("cannot move damaged file aside")
	}
	s.opt.Logger.Error().Err(cause).Str("file", path).Str("moved_to", aside).
		Msg("damaged replication meta; the proxy will full-sync from its master rather than serve unverified bytes")
}

func checkSnapshot(dir string, snap *SnapshotInfo) error {
	if snap == nil {
		return errors.New("meta names no snapshot")
	}
	path := filepath.Join(dir, snap.File)
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("snapshot %s: %w", path, err)
	}
	if info.Size() != snap.Size {
		return fmt.Errorf("snapshot %s has %d bytes, meta says %d: %w", path, info.Size(), snap.Size, errSnapshotSize)
	}
	return nil
}

var errSnapshotSize = errors.New("wrong size")

// removeStale deletes what a crash mid-transition may have left: log
// generations and snapshots the meta does not name, and temp files.
func (s *Store) removeStale() {
	entries, _ := os.ReadDir(filepath.Join(s.dir, "log"))
	for _, e := range entries {
		if s.log != nil && e.Name() == strconv.FormatUint(s.meta.Epoch, 10) {
			continue
		}
		os.RemoveAll(filepath.Join(s.dir, "log", e.Name()))
	}
	entries, _ = os.ReadDir(filepath.Join(s.dir, "snapshot"))
	for _, e := range entries {
		if s.meta.Snapshot != nil && s.log != nil && e.Name() == s.meta.Snapshot.File {
			continue
		}
		os.Remove(filepath.Join(s.dir, "snapshot", e.Name()))
	}
}

// RandomReplID returns 40 random hex characters, like Redis' replid.
func RandomReplID() string {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	return hex.EncodeToString(b[:])
}

// snapshotNeeds is the first offset a full sync from the snapshot reads
// from the log, which retention holds (-1: none).
func (s *Store) snapshotNeeds() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.meta.Snapshot == nil {
		return -1
	}
	return s.meta.Snapshot.Offset + 1
}

// State returns the current replication position.
func (s *Store) State() State {
	st, _ := s.View()
	return st
}

// View returns the state together with the log generation it describes, so
// a decision taken on the state reads the same history.
func (s *Store) View() (State, *Log) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := State{
		ReplID: s.meta.ReplID, ReplID2: s.meta.ReplID2, SecondOffset: s.meta.SecondOffset,
		Epoch: s.meta.Epoch, First: 1, End: 1, Durable: 1,
	}
	if s.log != nil {
		st.HasHistory = true
		st.First, st.End = s.log.Bounds()
		st.Durable = s.log.Durable()
		snap := *s.meta.Snapshot
		st.Snapshot = &snap
	}
	return st, s.log
}

// Log returns the current generation, or nil before the first full sync.
func (s *Store) Log() *Log {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.log
}

// SyncNow makes the current log durable up to its end.
func (s *Store) SyncNow() {
	if l := s.Log(); l != nil {
		l.SyncNow()
	}
}

// SyncStats reports the current log's fsync statistics.
func (s *Store) SyncStats() SyncStats {
	if l := s.Log(); l != nil {
		return l.syncer.snapshot()
	}
	return SyncStats{}
}

// Append adds stream bytes to the current generation.
func (s *Store) Append(p []byte) error {
	l := s.Log()
	if l == nil {
		return errors.New("append before the first full sync")
	}
	return l.Append(p)
}

// ShiftID records an upstream ID change (+CONTINUE <newid>): the old ID stays
// valid, as replid2, for offsets up to the current end, so replicas that
// still hold it can continue partially.
func (s *Store) ShiftID(newID string) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.log == nil {
		return errors.New("shift replid without history")
	}
	m := s.meta
	_, end := s.log.Bounds()
	m.ReplID2, m.SecondOffset, m.ReplID = m.ReplID, end, newID
	if err := writeMeta(s.metaPath(), m); err != nil {
		return fmt.Errorf("persist replid shift: %w", err)
	}
	s.meta = m
	return nil
}

// Close syncs and closes the log and releases the data dir.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if s.log != nil {
		err = s.log.Close()
	}
	s.lock.Close()
	return err
}
