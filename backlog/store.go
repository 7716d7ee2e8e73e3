package backlog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// Options configure a Store.
type Options struct {
	Log    LogOptions
	Logger zerolog.Logger
	// ScrubRate bounds the background recheck of sealed segments and the
	// snapshot, in bytes per second; 0 turns the scrub off.
	ScrubRate int64
	// ScrubPause is the rest between two scrub passes (0: a minute).
	ScrubPause time.Duration
	// SnapshotKeep is how many snapshots of the current generation are
	// kept, the current one included (0 or 1: only the current one).
	SnapshotKeep int
	// DamagedMaxBytes bounds damaged/ (0: unbounded): past it, what was
	// moved there only along with damaged files is deleted.
	DamagedMaxBytes int64
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
// log generation and the snapshot. The upstream link is its only appender;
// the refresher also writes, through AdoptSnapshot (doc.go).
type Store struct {
	dir  Layout
	opt  Options
	lock *os.File

	// writeMu serializes the meta writers (Reset, AdoptSnapshot, ShiftID)
	// across their whole validate, write and swap; mu guards the fields and
	// is never held across a meta write, so appends and PSYNC decisions do
	// not wait on the disk.
	writeMu sync.Mutex
	// prunePending: retention asked for a history prune that writeMu's
	// holder at the time runs as it lets go.
	prunePending atomic.Bool
	closed       bool // set by Close under writeMu: no meta write after it
	mu           sync.RWMutex
	meta         Meta
	log          *Log // nil until there is a history

	damaged *damagedArea

	snapMu       sync.Mutex
	snapVerified string // snapshot file whose CRC-64 this process checked
	snapDamaged  string // snapshot file found damaged, moved aside

	stopScrub context.CancelFunc
	scrubDone chan struct{}
}

// Open opens (or creates) the store in dir. Damage is never served: a
// corrupt meta file, or a missing, resized or corrupt snapshot, is moved
// aside into damaged/ with the log it belonged to, logged with its path, and
// the store starts without history, so the proxy full-syncs from upstream.
func Open(dir string, opt Options) (*Store, error) {
	at := Layout(dir)
	for _, d := range []string{dir, at.Snapshots(), at.Logs()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
		if err := checkDataDir(d); err != nil {
			return nil, err
		}
	}
	lock, err := lockDir(at)
	if err != nil {
		return nil, err
	}
	opt.Log.Logger = opt.Logger
	if opt.Log.Sync == nil {
		opt.Log.Sync = fileSync
	}
	opt.Log.DamagedDir = at.Damaged()
	opt.Log.DamagedMaxBytes = opt.DamagedMaxBytes
	s := &Store{dir: at, opt: opt, lock: lock}
	s.damaged = newDamagedArea(opt.Log.DamagedDir, opt.DamagedMaxBytes, opt.Logger)
	s.opt.Log.damaged = s.damaged
	s.opt.Log.OnTrim = s.pruneHistory
	s.opt.Log.Hold = s.snapshotNeeds
	if err := s.load(); err != nil {
		lock.Close()
		return nil, err
	}
	s.removeStale()
	s.damaged.bound()
	if opt.ScrubRate > 0 {
		ctx, cancel := context.WithCancel(context.Background())
		s.stopScrub, s.scrubDone = cancel, make(chan struct{})
		go s.scrub(ctx)
	}
	return s, nil
}

func lockDir(dir Layout) (*os.File, error) {
	path := dir.Lock()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("data dir %s is in use by another replproxy (lock %s): %w", dir, path, err)
	}
	return f, nil
}

func (s *Store) load() error {
	m, err := readMeta(s.dir.Meta())
	switch {
	case errors.Is(err, ErrNoMeta):
		s.meta = freshMeta(0)
		return nil
	case errors.Is(err, ErrCorrupt):
		s.setAside("damaged replication meta; it, the backlog and the snapshot are moved aside and the proxy will full-sync from its master rather than serve unverified bytes",
			err, s.dir.Meta(), append([]string{s.dir.Meta()}, s.everything()...)...)
		s.meta = freshMeta(0)
		return nil
	case err != nil:
		return err // unreadable, not damaged: the operator must fix it, nothing is thrown away
	}
	if err := checkSnapshot(s.dir.Snapshots(), m.Snapshot, true, nil); err != nil {
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, errSnapshotSize) && !errors.Is(err, ErrSnapshotDamaged) && m.Snapshot != nil {
			return err
		}
		paths := []string{s.dir.LogDir(m.Epoch)}
		file := s.dir.Meta()
		if m.Snapshot != nil {
			file = s.dir.Snapshot(m.Snapshot.File)
			paths = append(paths, file)
		}
		s.setAside("snapshot unusable; it and its backlog are moved aside and the proxy will full-sync from its master",
			err, file, paths...)
		s.meta = freshMeta(m.Epoch + 1)
		return nil
	}
	s.snapVerified = m.Snapshot.File
	m.History = s.presentHistory(m.History)
	l, err := OpenLog(s.dir.LogDir(m.Epoch), m.LogStart, s.opt.Log)
	if err != nil {
		return err
	}
	s.meta, s.log = m, l
	first, end := l.Bounds()
	s.opt.Logger.Info().Str("replid", m.ReplID).Int64("first", first).Int64("end", end).
		Int64("snapshot_offset", m.Snapshot.Offset).Msg("backlog recovered")
	return nil
}

// setAside moves damaged files, and the history they belong to, into
// damaged/<time>/, and logs why, naming file.
func (s *Store) setAside(why string, cause error, file string, paths ...string) {
	dir, err := moveAside(s.dir.Damaged(), paths...)
	if err != nil {
		s.opt.Logger.Error().Err(err).Msg("cannot move damaged files aside")
	}
	if dir != "" {
		if err := noteDamaged(dir, why, filepath.Base(file)); err != nil {
			s.opt.Logger.Error().Err(err).Msg("cannot mark the damaged file in damaged/")
		}
	}
	s.opt.Logger.Error().Err(cause).Str("file", file).Str("moved_to", dir).Msg(why)
}

// DamagedBytes is damaged/'s size on disk, as of its last check (at
// start, after each move into it, and at each scrub pass).
func (s *Store) DamagedBytes() int64 { return s.damaged.Bytes() }

// diskError logs err at error level, where alerting looks, and returns it.
func (s *Store) diskError(err error) error {
	s.opt.Logger.Error().Err(err).Msg("disk error in the data dir")
	return err
}

// everything lists the data dir's log generations and snapshot files.
func (s *Store) everything() []string {
	var paths []string
	for _, sub := range []string{s.dir.Logs(), s.dir.Snapshots()} {
		entries, _ := os.ReadDir(sub)
		for _, e := range entries {
			paths = append(paths, filepath.Join(sub, e.Name()))
		}
	}
	return paths
}

func freshMeta(epoch uint64) Meta {
	return Meta{ReplID: RandomReplID(), ReplID2: NoReplID, SecondOffset: -1, Epoch: epoch, LogStart: 1}
}

// removeStale deletes what a crash mid-transition may have left: log
// generations and snapshots the meta does not name, and temp files. Damage
// was moved aside before this runs; these are leftovers, not damage.
func (s *Store) removeStale() {
	for _, p := range s.everything() {
		name := filepath.Base(p)
		switch {
		case s.log != nil && (p == s.dir.LogDir(s.meta.Epoch) || p == s.dir.Snapshot(name) && s.keeps(name)):
		case p == s.dir.Snapshot(name):
			os.Remove(p)
		default:
			os.RemoveAll(p)
		}
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

// SyncNow makes the current log durable up to its end (Log.SyncNow).
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

// AppendStuck is how long the current append has been running (Log.AppendStuck).
func (s *Store) AppendStuck(now time.Time) time.Duration {
	if l := s.Log(); l != nil {
		return l.AppendStuck(now)
	}
	return 0
}

// Rewound is closed when the current log is cut back: the upstream session
// must end and PSYNC again from End. Nil (never ready) without history.
func (s *Store) Rewound() <-chan struct{} {
	if l := s.Log(); l != nil {
		return l.Rewound()
	}
	return nil
}

// Resume is called by the writer before it PSYNCs from End: appends are
// accepted again after a cut.
func (s *Store) Resume() {
	if l := s.Log(); l != nil {
		l.Resume()
	}
}

// ShiftID records an upstream ID change (+CONTINUE <newid>): the old ID stays
// valid, as replid2, for offsets up to the current end, so replicas that
// still hold it can continue partially. The link, the only appender, calls
// it, so the end cannot move while the meta is written outside mu.
func (s *Store) ShiftID(newID string) error {
	s.writeMu.Lock()
	defer s.unlockWrite()
	if s.closed {
		return ErrClosed
	}
	s.mu.RLock()
	m, l := s.meta, s.log
	s.mu.RUnlock()
	if l == nil {
		return errors.New("shift replid without history")
	}
	_, end := l.Bounds()
	m.ReplID2, m.SecondOffset, m.ReplID = m.ReplID, end, newID
	if err := writeMeta(s.dir.Meta(), m, s.opt.Log.Sync); err != nil {
		return s.diskError(fmt.Errorf("persist replid shift: %w", err))
	}
	s.mu.Lock()
	s.meta = m
	s.mu.Unlock()
	return nil
}

// Close stops the scrub, syncs and closes the log and releases the data dir.
// It holds writeMu, so no meta writer swaps the log under it, but not mu
// while the log closes: Log.Close waits for the writer's append, which may
// be rolling a segment and asking snapshotNeeds (under mu) what retention
// must keep (the lock order is in doc.go).
func (s *Store) Close() error {
	if s.stopScrub != nil {
		s.stopScrub()
		<-s.scrubDone
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock() // not unlockWrite: no prune after Close
	if s.closed {
		return nil
	}
	s.closed = true
	l := s.Log()
	var err error
	if l != nil {
		err = l.Close()
	}
	s.lock.Close()
	return err
}

// scrub rechecks, at ScrubRate, every sealed segment's CRCs and the
// snapshot's CRC-64. It is not what keeps damage from replicas: every send
// checks what it reads (Cursor.Send, SnapshotReader). It finds damage in
// what nobody reads, so that it is logged, moved aside and resent by the
// master while the master still holds it, before a replica needs it.
func (s *Store) scrub(ctx context.Context) {
	defer close(s.scrubDone)
	pause := s.opt.ScrubPause
	if pause <= 0 {
		pause = time.Minute
	}
	pace := newPacer(ctx, s.opt.ScrubRate)
	for {
		if l := s.Log(); l != nil {
			s.scrubLog(ctx, l, pace)
		}
		if err := s.scrubSnapshot(pace); err != nil && ctx.Err() == nil {
			s.opt.Logger.Error().Err(err).Msg("scrub could not read the snapshot")
		}
		s.damaged.bound() // also sees a snapshot moved aside, and what an operator deleted
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
	}
}

func (s *Store) scrubLog(ctx context.Context, l *Log, pace func(int64) error) {
	l.mu.RLock()
	var segs []*segment
	for _, seg := range l.segs {
		if seg.synced.Load() {
			segs = append(segs, seg)
		}
	}
	l.mu.RUnlock()
	for _, seg := range segs {
		if ctx.Err() != nil {
			return
		}
		path := segmentPath(l.dir, seg.first)
		cuts := l.cuts.Load()
		chk, err := verifySegment(path, false, pace)
		if l.cuts.Load() != cuts {
			return // a cut rewrote files under the check: start a new pass
		}
		switch {
		case err != nil && errors.Is(err, os.ErrNotExist):
			// removed by retention meanwhile
		case err != nil && ctx.Err() == nil:
			s.opt.Logger.Error().Err(err).Str("file", path).Msg("scrub could not read a backlog segment")
		case err == nil && (chk.mismatch || chk.unverifiable):
			l.damaged(seg, chk.problem)
			return
		}
	}
}

// newPacer returns a function that sleeps so that the bytes it is told of
// pass at no more than rate per second.
func newPacer(ctx context.Context, rate int64) func(int64) error {
	start, total := time.Now(), int64(0)
	return func(n int64) error {
		total += n
		due := start.Add(time.Duration(float64(total) / float64(rate) * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
		} else if wait < -time.Second {
			start, total = time.Now(), 0 // idle time earns no burst
		}
		return nil
	}
}
