package backlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// ErrTrimmed means the requested offset fell out of retention.
var ErrTrimmed = errors.New("offset no longer in the backlog")

// ErrClosed means the log generation was closed, for a new history or shutdown.
var ErrClosed = errors.New("log closed")

// ErrRewound means the log was cut back (a failed fsync, or damage found on
// disk) since the writer last resumed: its next bytes would land at the
// wrong offset. The writer must PSYNC again from End, then call Resume.
var ErrRewound = errors.New("log cut back; resume upstream from its end")

const (
	segmentSuffix  = ".seg"
	preparedSuffix = ".prep"
)

// LogOptions bound one log generation.
type LogOptions struct {
	SegmentBytes int64         // a segment is rolled at this size
	MaxBytes     int64         // retention: oldest segments go once the rest holds this much
	MaxAge       time.Duration // retention: sealed segments older than this go (0: no age limit)
	Fsync        FsyncPolicy
	Logger       zerolog.Logger
	// Sync forces a file to disk (nil: fsync). Tests inject failures here.
	Sync SyncFunc
	// DamagedDir receives, under a timestamped directory, the segment
	// files found damaged; nothing found damaged is deleted.
	DamagedDir string
	// DamagedMaxBytes bounds DamagedDir: past it, files moved there only
	// along with damaged ones are deleted (0: unbounded).
	DamagedMaxBytes int64
	damaged         *damagedArea        // the Store's, shared with its own moves; nil: the log's own
	OnFsync         func(time.Duration) // observes each fsync's latency (metrics); nil: none
	// OnTrim is told the new first offset after retention removed
	// segments, so that what depends on them (kept snapshots) goes too.
	OnTrim func(first int64)
	// Hold, when set, returns the first offset a full sync from the
	// snapshot needs. Retention keeps it, up to HoldMaxBytes beyond
	// MaxBytes, so the snapshot stays usable until a newer one is adopted.
	Hold         func() int64
	HoldMaxBytes int64
}

type segment struct {
	first  int64
	size   int64       // guarded by Log.mu
	sealed time.Time   // when it stopped growing; zero for the active segment
	synced atomic.Bool // fsynced whole after its roll, and sealed in its index
}

func (s *segment) end() int64 { return s.first + s.size }

// activeSegment is the one being written, with its index.
type activeSegment struct {
	seg     *segment
	data    *os.File
	idx     *os.File
	idxSize int64
}

// Log is an offset-addressed, append-only byte log split into segment files
// named by their first offset. It has one writer (the upstream link) and any
// number of Cursors; readers wait on Changed instead of polling.
type Log struct {
	dir string
	opt LogOptions
	log zerolog.Logger

	// wmu is held by Append for its whole run, and by a cut, so a cut
	// never lands in the middle of an append.
	wmu sync.Mutex

	mu      sync.RWMutex
	segs    []*segment
	first   int64
	end     int64 // offset of the next byte to be appended
	changed chan struct{}
	// watched says someone took changed since it was last closed: an
	// append with nobody waiting then allocates and closes nothing.
	watched atomic.Bool
	// recent holds the bytes of the last append as the writer had them in
	// memory, so a caught-up cursor sends them without reading the disk.
	recent     *batch
	batches    sync.Pool // of *batch
	closed     bool
	active     *activeSegment // replaced under mu, by a roll or a cut (both under wmu); synced by the syncer
	rewound    chan struct{}  // closed at a cut; replaced by Resume
	resume     bool           // a cut happened and the writer has not resumed
	broken     error          // a cut's file work failed: nothing is appended until Resume finishes it
	unfinished *cutWork       // that file work, still to be done

	durable   atomic.Int64
	appending atomic.Int64 // when the append in progress began (UnixNano); 0 between appends
	syncer    *syncer
	next      chan preparedSegment // the segment after the active one, made ahead of need
	preparing bool
	lastTrim  time.Time
	recBuf    []byte
	cuts      atomic.Int64 // cursors reopen their files after a cut
	follow    followers    // caught-up readers the writer feeds itself (follow.go)
	times     *timeIndex   // offset -> wall clock, for operators (timeindex.go)
	holding   bool         // retention is holding bytes for the snapshot (logged once per episode)
	sendBufs  chan []byte  // buffers kept for sends from disk (cursor.go)

	culpritMu sync.Mutex
	culprits  map[int64]bool // first offsets of segments found damaged, until moved aside
}

type preparedSegment struct {
	first int64
	path  string
	err   error
}

func segmentPath(dir string, first int64) string {
	return filepath.Join(dir, fmt.Sprintf("%020d%s", first, segmentSuffix))
}

// OpenLog opens the generation in dir, creating it empty at start if needed.
// Recovery keeps each segment up to its last record whose bytes are present
// (and, for the last segment, whose CRC matches); a damaged segment ends the
// log there, since bytes after it cannot be served without the missing ones.
func OpenLog(dir string, start int64, opt LogOptions) (*Log, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create log dir %s: %w", dir, err)
	}
	if opt.Sync == nil {
		opt.Sync = fileSync
	}
	if opt.damaged == nil {
		opt.damaged = newDamagedArea(opt.DamagedDir, opt.DamagedMaxBytes, opt.Logger)
	}
	l := &Log{dir: dir, opt: opt, log: opt.Logger, first: start, end: start,
		changed: make(chan struct{}), rewound: make(chan struct{}), next: make(chan preparedSegment, 1),
		sendBufs: make(chan []byte, sendBufsKept)}
	l.batches.New = func() any { return new(batch) }
	segs, err := l.recover()
	if err != nil {
		return nil, err
	}
	l.opt.damaged.bound()
	// A kill -9 leaves the last appends, and segments rolled just before
	// it, possibly only in the page cache: they count as durable only once
	// this process has fsynced them.
	if err := l.syncRecovered(segs); err != nil {
		return nil, err
	}
	l.segs = segs
	if n := len(segs); n > 0 {
		l.first, l.end = segs[0].first, segs[n-1].end()
		if err := l.reopenActive(segs[n-1]); err != nil {
			return nil, err
		}
	}
	l.durable.Store(l.end)
	l.times = openTimeIndex(dir, l.end)
	l.syncer = startSyncer(l, opt.Fsync, opt.Sync, l.end)
	return l, nil
}

// syncRecovered fsyncs every kept segment not sealed, its index, and the
// directories, and seals all but the last: from then on they are known to
// be on disk, and the next recovery need not re-read them.
func (l *Log) syncRecovered(segs []*segment) error {
	synced := 0
	for i, s := range segs {
		if s.synced.Load() {
			continue
		}
		path := segmentPath(l.dir, s.first)
		a, err := openSegmentFiles(path)
		if err != nil {
			return err
		}
		a.seg = s
		err = a.sync(l.opt.Sync)
		if err == nil && i < len(segs)-1 {
			err = a.sealRecovered(l.opt.Sync)
		}
		a.close()
		if err != nil {
			return fmt.Errorf("make recovered segment durable: %w", err)
		}
		synced++
	}
	for _, d := range []string{l.dir, filepath.Dir(l.dir)} {
		if err := syncDir(d, l.opt.Sync); err != nil {
			return fmt.Errorf("make recovered segments durable: %w", err)
		}
	}
	if synced > 0 {
		l.log.Info().Int("segments", synced).Str("dir", l.dir).
			Msg("recovered segments fsynced before anything is acknowledged upstream")
	}
	return nil
}

func openSegmentFiles(path string) (*activeSegment, error) {
	data, err := os.OpenFile(path, os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open segment %s: %w", path, err)
	}
	idx, err := os.OpenFile(indexPath(path), os.O_RDWR, 0o600)
	if err != nil {
		data.Close()
		return nil, fmt.Errorf("open index of segment %s: %w", path, err)
	}
	return &activeSegment{data: data, idx: idx}, nil
}

// sealRecovered seals a recovered segment right after its last complete
// record, whatever a torn index write left after it.
func (a *activeSegment) sealRecovered(sync SyncFunc) error {
	recs, _, err := readIndex(a.idx.Name())
	if err != nil {
		return err
	}
	a.idxSize = int64(len(indexMagic) + len(recs)*recordSize)
	if err := a.idx.Truncate(a.idxSize); err != nil {
		return fmt.Errorf("truncate index %s: %w", a.idx.Name(), err)
	}
	return a.seal(sync)
}

func (l *Log) recover() ([]*segment, error) {
	removePrepared(l.dir)
	segs, err := scanSegments(l.dir)
	if err != nil {
		return nil, err
	}
	for i, s := range segs {
		path := segmentPath(l.dir, s.first)
		if i > 0 && s.first != segs[i-1].end() {
			return l.dropFrom(segs, i, fmt.Sprintf("gap: previous segment ends at %d", segs[i-1].end()), false)
		}
		// Only a sealed segment is known to have reached the disk whole;
		// any other may be torn by a power cut, so all its CRCs are
		// checked. The last one is never trusted by its seal.
		last := i == len(segs)-1
		chk, err := verifySegment(path, !last, nil)
		if err != nil {
			return nil, err
		}
		if chk.problem == "" {
			s.size = chk.valid
			s.synced.Store(chk.sealed && !last)
			continue
		}
		l.logRecovered(path, chk, last)
		if chk.unverifiable {
			return l.dropFrom(segs, i, chk.problem, true)
		}
		if chk.mismatch {
			dir, err := copyAside(l.opt.DamagedDir, path, indexPath(path))
			if err != nil {
				// A full disk has no room for the copy: the segment is
				// moved aside whole instead (a rename needs none), so the
				// log opens, and the partial copy is not left to fill it.
				if dir != "" {
					os.RemoveAll(dir)
				}
				l.log.Error().Err(err).Str("file", path).Msg("cannot copy the damaged segment aside for repair: it is moved aside whole, with the segments after it")
				return l.dropFrom(segs, i, chk.problem, true)
			}
			if err := noteDamaged(dir, chk.problem, filepath.Base(path), filepath.Base(indexPath(path))); err != nil {
				l.log.Error().Err(err).Msg("cannot mark the damaged segment in damaged/")
			}
		}
		if err := repairSegment(path, chk); err != nil {
			return nil, err
		}
		s.size = chk.valid
		return l.dropFrom(segs, i+1, "follows a damaged segment", false)
	}
	return segs, nil
}

// logRecovered says what recovery found in a segment. Bytes past the last
// index record of the last segment are an append that a crash cut short
// between its data and its index record, as kill -9 leaves under fsync
// no: an ordinary recovery, logged as a warning. A checksum mismatch, or
// anything wrong elsewhere, is damage, logged at error level, where
// alerts page.
func (l *Log) logRecovered(path string, chk segmentCheck, last bool) {
	if last && chk.pastIndex {
		l.log.Warn().Str("file", path).Str("problem", chk.problem).Int64("kept_bytes", chk.valid).
			Msg("torn tail of the last backlog segment (an append cut short by a crash): the bytes past its last index record are dropped and upstream resends them")
		return
	}
	l.log.Error().Str("file", path).Str("problem", chk.problem).Int64("kept_bytes", chk.valid).
		Msg("backlog segment damaged; the log ends at its last good record and upstream resends the rest")
}

// dropFrom moves segs[i:] aside: bytes after a damaged spot cannot be
// served, but nothing found damaged is deleted. culprit says segs[i] is
// itself damaged; the others are only moved along.
func (l *Log) dropFrom(segs []*segment, i int, why string, culprit bool) ([]*segment, error) {
	if i >= len(segs) {
		return segs, nil
	}
	var paths []string
	for _, s := range segs[i:] {
		path := segmentPath(l.dir, s.first)
		paths = append(paths, path, indexPath(path))
	}
	dir, err := moveAside(l.opt.DamagedDir, paths...)
	if err != nil {
		return nil, err
	}
	var names []string
	if culprit {
		names = append(names, filepath.Base(paths[0]), filepath.Base(paths[1]))
	}
	if err := noteDamaged(dir, why, names...); err != nil {
		l.log.Error().Err(err).Msg("cannot mark the damaged segment in damaged/")
	}
	for _, s := range segs[i:] {
		l.log.Error().Str("file", segmentPath(l.dir, s.first)).Str("reason", why).Str("moved_to", dir).
			Msg("backlog segment moved aside")
	}
	return segs[:i], nil
}

func removeSegmentFiles(path string) error {
	for _, p := range []string{path, indexPath(path)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	return nil
}

// removePrepared deletes segment files made ahead of need and never used.
// Only the log's owner does this: readers beside a live proxy (inspect,
// verify, restore) list segments without touching the one it prepares.
func removePrepared(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), preparedSuffix) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// scanSegments lists the segments of a log dir, changing nothing.
func scanSegments(dir string) ([]*segment, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read log dir %s: %w", dir, err)
	}
	var segs []*segment
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, segmentSuffix) {
			continue
		}
		first, err := strconv.ParseInt(strings.TrimSuffix(name, segmentSuffix), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("segment %s: name is not an offset", filepath.Join(dir, name))
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("stat segment %s: %w", filepath.Join(dir, name), err)
		}
		segs = append(segs, &segment{first: first, size: info.Size(), sealed: info.ModTime()})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].first < segs[j].first })
	return segs, nil
}

// reopenActive makes s the segment appended to. A seal at the end of its
// index is dropped first: records are about to follow it.
func (l *Log) reopenActive(s *segment) error {
	path := segmentPath(l.dir, s.first)
	recs, sealed, err := readIndex(indexPath(path))
	if err != nil {
		return err
	}
	a, err := openSegmentFiles(path)
	if err != nil {
		return err
	}
	a.idxSize = int64(len(indexMagic) + len(recs)*recordSize)
	if sealed {
		if err := a.idx.Truncate(a.idxSize); err != nil {
			a.close()
			return fmt.Errorf("unseal index of segment %s: %w", path, err)
		}
	}
	a.seg = s
	s.sealed = time.Time{}
	s.synced.Store(false)
	l.active = a
	return nil
}

// Bounds returns the retained range [first, end).
func (l *Log) Bounds() (first, end int64) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.first, l.end
}

// AppendStuck is how long the append in progress has been running at now
// (0 between appends): a disk that stops answering shows here while every
// reader goes on from what the log already holds.
func (l *Log) AppendStuck(now time.Time) time.Duration {
	since := l.appending.Load()
	if since == 0 {
		return 0
	}
	return max(now.Sub(time.Unix(0, since)), 0)
}

// Durable is the end offset made durable under the fsync policy: the most the
// proxy may acknowledge upstream.
func (l *Log) Durable() int64 { return l.durable.Load() }

// SyncNow makes everything appended so far durable before it returns, for
// a master waiting on WAIT; under the "no" policy there is nothing to do.
// While a failed fsync's cut is pending it returns at once: the bytes past
// Durable are about to be cut, and the master resends them.
func (l *Log) SyncNow() {
	if l.opt.Fsync != FsyncNo {
		l.syncer.syncOnce()
	}
}

// Rewound returns a channel closed when the log is cut back: the writer's
// session must end, and it resumes from End.
func (l *Log) Rewound() <-chan struct{} {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.rewound
}

// Resume tells the log that the writer now continues from End, after
// finishing a cut whose file work failed if the disk now allows it.
func (l *Log) Resume() {
	l.finishCut()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.resume {
		l.resume = false
		l.rewound = make(chan struct{})
	}
}

// Changed returns a channel closed at the next append, cut or Close. The
// channel is closed once per append, however many pieces the append wrote,
// so waiters wake at most once per upstream read. A waiter checks End after
// taking the channel: an append that finished just before needs no wakeup.
func (l *Log) Changed() <-chan struct{} {
	l.mu.RLock()
	defer l.mu.RUnlock()
	l.watched.Store(true)
	return l.changed
}

// batch is one append's bytes at their offset. It is never modified while
// published or held: the writer and every reader sending from it hold a
// reference, and the buffer goes back to the pool after the last release,
// so a busy link recycles a few buffers instead of feeding the GC.
type batch struct {
	start int64
	data  []byte
	refs  atomic.Int32
	pool  *sync.Pool
}

func (b *batch) release() {
	if b.refs.Add(-1) == 0 {
		b.pool.Put(b)
	}
}

// Batch is memory for one upstream read on its way into the log. The
// writer reads into Space and hands the batch to AppendBatch; the log then
// publishes those very bytes to caught-up readers, without a copy.
type Batch = batch

// NewBatch returns an empty batch with room for at least size bytes, from
// a pool: a busy link recycles a few buffers instead of feeding the GC.
func (l *Log) NewBatch(size int) *Batch {
	b := l.batches.Get().(*batch)
	if cap(b.data) < size {
		b.data = make([]byte, 0, size)
	}
	b.data, b.pool = b.data[:0], &l.batches
	b.refs.Store(1)
	return b
}

// Space is the batch's whole buffer, to read into.
func (b *Batch) Space() []byte { return b.data[:cap(b.data)] }

// Release gives back a batch that was not appended.
func (b *Batch) Release() { b.release() }

// publish makes the first n bytes of b, an append that began at start, the
// recent batch, and wakes the waiters once. It takes over the writer's
// reference to b. Only the writer calls it, after every byte of those n
// and their index records are written.
func (l *Log) publish(start int64, b *batch, n int) {
	b.start, b.data = start, b.data[:n]
	l.mu.Lock()
	old := l.recent
	l.recent = nil
	pushed := false
	if n > 0 && !l.closed && start+int64(n) == l.end {
		b.refs.Add(1) // the recent slot's reference; the writer keeps its own while it pushes
		l.recent, pushed = b, true
	}
	l.wake()
	l.mu.Unlock()
	if old != nil {
		old.release()
	}
	if pushed {
		l.push(start, b.data)
	}
	b.release()
}

// dropRecent forgets the recent batch (a cut or Close). Called with mu held.
func (l *Log) dropRecent() {
	if l.recent != nil {
		l.recent.release()
		l.recent = nil
	}
}

// wake closes changed if anyone took it. Called with mu held. After Close
// the channel stays closed for good: a writer that has not yet seen the
// close must not close it again.
func (l *Log) wake() {
	if l.closed {
		return
	}
	if l.watched.Swap(false) {
		close(l.changed)
		l.changed = make(chan struct{})
	}
}

// passed says whether off lies beyond seg, a sealed segment: a cursor fed
// from memory then lets go of it, or it would keep a trimmed file's disk
// space for as long as it stays caught up.
func (l *Log) passed(seg *segment, off int64) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.active == nil || (seg != l.active.seg && off >= seg.end())
}

// recentFrom returns the in-memory bytes from off to the end of the recent
// batch, or nil when off is not inside it or a cut happened after cuts.
// The caller releases b once it no longer uses p.
func (l *Log) recentFrom(off, cuts int64) (b *batch, p []byte) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	b = l.recent
	if b == nil || l.closed || l.cuts.Load() != cuts || off < b.start {
		return nil, nil
	}
	end := min(b.start+int64(len(b.data)), l.end)
	if off >= end {
		return nil, nil
	}
	b.refs.Add(1)
	return b, b.data[off-b.start : end-b.start]
}

// Append writes a copy of p at the end of the log (see AppendBatch).
func (l *Log) Append(p []byte) error {
	b := l.NewBatch(len(p))
	b.data = append(b.data, p...)
	return l.AppendBatch(b, len(p))
}

// AppendBatch writes the first n bytes of b at the end of the log and takes
// b over: the caller must not touch it again. Only the writer calls it.
// Bytes count only once both they and their index record are written, a
// piece (up to a segment's end) at a time: after an error the log ends
// after the last piece written whole, which may be part of this append,
// and the caller may retry from End. After a cut it returns ErrRewound
// until Resume.
func (l *Log) AppendBatch(b *Batch, n int) error {
	// Stuck from before the writer's lock: a cut holds it across its
	// truncate and fsync, and a cut follows a failed fsync, on a sick disk.
	l.appending.Store(time.Now().UnixNano())
	defer l.appending.Store(0)
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.mu.RLock()
	resume, broken, closed := l.resume, l.broken, l.closed
	start := l.end
	l.mu.RUnlock()
	if broken != nil || resume || closed {
		b.release()
		switch {
		case closed:
			return ErrClosed // before the time index, which Close closed
		case broken != nil:
			return broken
		}
		return ErrRewound
	}
	l.times.note(start, time.Now())
	written, err := l.write(b.data[:n])
	if err == nil && l.opt.MaxAge > 0 && time.Since(l.lastTrim) > time.Second {
		l.trim()
	}
	// Waiters wake once, when the whole append is in, whether it ends well
	// or not; only bytes fully written (with their index record) are
	// published.
	l.publish(start, b, written)
	return err
}

// write writes p at the end, rolling segments as they fill, and returns how
// many bytes were written with their index record.
func (l *Log) write(p []byte) (written int, err error) {
	for len(p) > 0 {
		a, err := l.writable()
		if err != nil {
			return written, err
		}
		k, err := a.data.WriteAt(p[:min(int64(len(p)), l.opt.SegmentBytes-a.seg.size)], a.seg.size)
		if k > 0 {
			l.recBuf = encodeRecord(l.recBuf[:0], p[:k])
			if _, ierr := a.idx.WriteAt(l.recBuf, a.idxSize); ierr != nil {
				return written, fmt.Errorf("append to index of segment %d: %w", a.seg.first, ierr)
			}
			a.idxSize += recordSize
			l.advance(a.seg, int64(k))
			written += k
		}
		if err != nil {
			return written, fmt.Errorf("append to segment %d: %w", a.seg.first, err)
		}
		p = p[k:]
		l.maybePrepare(a)
	}
	return written, nil
}

// writable returns the active segment, rolling to a new one when it is full.
func (l *Log) writable() (*activeSegment, error) {
	l.mu.RLock()
	closed, a := l.closed, l.active
	l.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if a != nil && a.seg.size < l.opt.SegmentBytes {
		return a, nil
	}
	return l.roll()
}

func (l *Log) roll() (*activeSegment, error) {
	l.mu.RLock()
	first := l.end
	l.mu.RUnlock()
	path := segmentPath(l.dir, first)
	if err := l.takePrepared(first, path); err != nil {
		return nil, err
	}
	data, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create segment %s: %w", path, err)
	}
	if err := preallocate(data, l.opt.SegmentBytes); err != nil {
		data.Close()
		os.Remove(path)
		return nil, fmt.Errorf("preallocate segment %s: %w", path, err)
	}
	idx, err := createIndex(path)
	if err != nil {
		data.Close()
		os.Remove(path)
		return nil, err
	}
	preallocate(idx, min(l.opt.SegmentBytes/16, 4<<20))
	if err := syncDir(l.dir, l.opt.Sync); err != nil {
		data.Close()
		idx.Close()
		return nil, err
	}
	a := &activeSegment{seg: &segment{first: first}, data: data, idx: idx, idxSize: int64(len(indexMagic))}
	l.mu.Lock()
	if old := l.active; old != nil {
		old.seg.sealed = time.Now()
		l.syncer.retire(old)
	}
	l.active = a
	l.segs = append(l.segs, a.seg)
	l.mu.Unlock()
	l.trim()
	return a, nil
}

// preallocate reserves blocks without changing the file size, so the size
// stays the exact end of data and a full disk shows up at roll time, not in
// the middle of a segment.
func preallocate(f *os.File, n int64) error {
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, n)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return err
}

// maybePrepare starts making the next segment once the active one is half
// full, so a roll finds its file created and its blocks reserved.
func (l *Log) maybePrepare(a *activeSegment) {
	if l.preparing || a.seg.size < l.opt.SegmentBytes/2 {
		return
	}
	l.preparing = true
	first := a.seg.first + l.opt.SegmentBytes
	go func() {
		path := segmentPath(l.dir, first) + preparedSuffix
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err == nil {
			err = preallocate(f, l.opt.SegmentBytes)
			f.Close()
		}
		l.next <- preparedSegment{first: first, path: path, err: err}
	}()
}

// takePrepared moves a prepared file into place for the segment at first.
func (l *Log) takePrepared(first int64, path string) error {
	if !l.preparing {
		return nil
	}
	p := <-l.next
	l.preparing = false
	if p.err != nil || p.first != first {
		os.Remove(p.path)
		return nil // fall back to creating it now
	}
	if err := os.Rename(p.path, path); err != nil {
		return fmt.Errorf("install prepared segment %s: %w", path, err)
	}
	return nil
}

func (l *Log) advance(seg *segment, n int64) {
	l.mu.Lock()
	seg.size += n
	l.end += n
	end := l.end
	l.mu.Unlock()
	l.syncer.dirty(end)
}

// trim applies retention. Size: the oldest segments go while the others
// hold MaxBytes, so disk use stays within MaxBytes plus one segment. Age:
// sealed segments older than MaxAge go. A Cursor that has a removed segment
// open keeps reading it (the inode lives on); one that must open it gets
// ErrTrimmed.
func (l *Log) trim() {
	l.lastTrim = time.Now()
	hold := int64(-1)
	if l.opt.Hold != nil {
		hold = l.opt.Hold() // before l.mu: it reads the store's meta
	}
	l.mu.Lock()
	var victims []*segment
	held := false
	// The active segment counts at its full size: its blocks are reserved,
	// and it will hold that much before the next trim.
	total := int64(0)
	for _, s := range l.segs {
		total += s.size
	}
	if l.active != nil {
		total += l.opt.SegmentBytes - l.active.seg.size
	}
	for len(l.segs) > 1 {
		s := l.segs[0]
		bySize := total-s.size >= l.opt.MaxBytes
		byAge := l.opt.MaxAge > 0 && !s.sealed.IsZero() && time.Since(s.sealed) > l.opt.MaxAge
		if !bySize && !byAge {
			break
		}
		// A snapshot already past retention is held no more: nothing
		// kept now would make it usable again.
		if l.opt.HoldMaxBytes > 0 && hold >= l.first && s.end() > hold && total-s.size < l.opt.MaxBytes+l.opt.HoldMaxBytes {
			held = true
			break
		}
		total -= s.size
		victims = append(victims, s)
		l.segs = l.segs[1:]
		l.first = l.segs[0].first
	}
	l.mu.Unlock()
	for _, s := range victims {
		path := segmentPath(l.dir, s.first)
		if err := removeSegmentFiles(path); err != nil {
			l.log.Error().Err(err).Msg("retention could not remove a segment")
		}
	}
	if len(victims) > 0 {
		l.times.compact(l.first)
		if l.opt.OnTrim != nil {
			l.opt.OnTrim(l.first)
		}
		l.log.Debug().Int("segments", len(victims)).Int64("first", l.first).Msg("retention removed old segments")
	}
	l.logHold(held, hold, victims)
}

// logHold reports the start and the end of a hold, once each: a warning
// while retention keeps bytes for the snapshot, an error when the bound
// makes it let go and the snapshot can no longer be continued.
func (l *Log) logHold(held bool, hold int64, victims []*segment) {
	lost := hold >= 0 && len(victims) > 0 && victims[len(victims)-1].end() > hold
	switch {
	case held && !l.holding:
		l.log.Warn().Int64("snapshot_continues_at", hold).Int64("hold_max_bytes", l.opt.HoldMaxBytes).
			Msg("retention holds the stream after the snapshot until a newer snapshot is adopted")
	case lost && l.holding:
		l.log.Error().Int64("snapshot_continues_at", hold).Int64("hold_max_bytes", l.opt.HoldMaxBytes).
			Msg("retention passed the snapshot: the hold bound is reached; new replicas wait for a refresh")
	}
	l.holding = held
}

// locate returns the segment holding off and how many bytes can be read
// there. An offset past the end (a cut moved the end back below a reader)
// has nothing yet, like the end itself: the reader waits for the refill.
func (l *Log) locate(off int64) (seg *segment, n int64, err error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return nil, 0, ErrClosed
	}
	if off < l.first {
		return nil, 0, fmt.Errorf("offset %d outside [%d, %d]: %w", off, l.first, l.end, ErrTrimmed)
	}
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].end() > off })
	if i == len(l.segs) {
		return nil, 0, nil // at or past the end: nothing yet
	}
	return l.segs[i], l.segs[i].end() - off, nil
}

// Close stops the syncer after a last sync and wakes every waiter. The
// writer may be appending meanwhile: Close waits for that append (it may
// be rolling, taking the prepared segment and making a new active one),
// and every later one gets ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.dropRecent()
	close(l.changed)
	l.mu.Unlock()
	l.unparkAll(true)
	defer l.times.close()
	// Not held across the syncer's stop: a failed fsync's cut takes wmu,
	// and the syncer may be in one.
	l.wmu.Lock()
	if l.preparing {
		p := <-l.next
		os.Remove(p.path)
		l.preparing = false
	}
	l.mu.RLock()
	active := l.active
	l.mu.RUnlock()
	l.wmu.Unlock()
	return l.syncer.stop(active)
}

// Remove closes the log and deletes its directory: the generation is over.
func (l *Log) Remove() error {
	l.Close()
	if err := os.RemoveAll(l.dir); err != nil {
		return fmt.Errorf("remove log dir %s: %w", l.dir, err)
	}
	return nil
}
