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

	"golang.org/x/sys/unix"
)

// ErrTrimmed means the requested offset fell out of retention.
var ErrTrimmed = errors.New("offset no longer in the backlog")

// ErrClosed means the log generation was closed, for a new history or shutdown.
var ErrClosed = errors.New("log closed")

const segmentSuffix = ".seg"

// LogOptions bound one log generation.
type LogOptions struct {
	SegmentBytes int64 // a segment is rolled at this size
	MaxBytes     int64 // retention: oldest segments go once the rest holds this much
	Fsync        FsyncPolicy
}

type segment struct {
	first int64
	size  int64 // guarded by Log.mu
}

func (s *segment) end() int64 { return s.first + s.size }

// Log is an offset-addressed, append-only byte log split into segment files
// named by their first offset. It has one writer (the upstream link) and any
// number of Cursors; readers wait on Changed instead of polling.
type Log struct {
	dir string
	opt LogOptions

	mu      sync.RWMutex
	segs    []*segment
	first   int64
	end     int64 // offset of the next byte to be appended
	changed chan struct{}
	closed  bool

	active  *os.File // writer-owned
	durable atomic.Int64
	syncer  *syncer
}

func segmentPath(dir string, first int64) string {
	return filepath.Join(dir, fmt.Sprintf("%020d%s", first, segmentSuffix))
}

// OpenLog opens the generation in dir, creating it empty at start if needed.
// A gap between segments (a lost or torn middle segment) truncates the log at
// the gap: bytes after it cannot be served without the missing ones.
func OpenLog(dir string, start int64, opt LogOptions) (*Log, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create log dir %s: %w", dir, err)
	}
	segs, err := scanSegments(dir)
	if err != nil {
		return nil, err
	}
	segs, err = dropAfterGap(dir, segs)
	if err != nil {
		return nil, err
	}
	if len(segs) > 0 && segs[0].first > start {
		start = segs[0].first
	}
	l := &Log{dir: dir, opt: opt, segs: segs, first: start, end: start, changed: make(chan struct{})}
	if n := len(segs); n > 0 {
		l.first, l.end = segs[0].first, segs[n-1].end()
		if err := l.openActive(segs[n-1]); err != nil {
			return nil, err
		}
	}
	l.durable.Store(l.end)
	l.syncer = startSyncer(l, opt.Fsync)
	return l, nil
}

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
		segs = append(segs, &segment{first: first, size: info.Size()})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].first < segs[j].first })
	return segs, nil
}

func dropAfterGap(dir string, segs []*segment) ([]*segment, error) {
	for i := 1; i < len(segs); i++ {
		if segs[i].first == segs[i-1].end() {
			continue
		}
		for _, s := range segs[i:] {
			if err := os.Remove(segmentPath(dir, s.first)); err != nil {
				return nil, fmt.Errorf("remove segment %d after gap at %d: %w", s.first, segs[i-1].end(), err)
			}
		}
		return segs[:i], nil
	}
	return segs, nil
}

func (l *Log) openActive(s *segment) error {
	f, err := os.OpenFile(segmentPath(l.dir, s.first), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open segment %d: %w", s.first, err)
	}
	l.active = f
	return nil
}

// Bounds returns the retained range [first, end).
func (l *Log) Bounds() (first, end int64) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.first, l.end
}

// Durable is the end offset made durable under the fsync policy: the most the
// proxy may acknowledge upstream.
func (l *Log) Durable() int64 { return l.durable.Load() }

// Changed returns a channel closed at the next append or at Close.
func (l *Log) Changed() <-chan struct{} {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.changed
}

// Append writes p at the end of the log. Only the owner calls it. After an
// error the log holds exactly the bytes that reached the file, so the caller
// may retry from End.
func (l *Log) Append(p []byte) error {
	for len(p) > 0 {
		seg, err := l.writable()
		if err != nil {
			return err
		}
		n := int64(len(p))
		if room := l.opt.SegmentBytes - seg.size; n > room {
			n = room
		}
		written, err := l.active.Write(p[:n])
		l.advance(seg, int64(written))
		if err != nil {
			return fmt.Errorf("append to segment %d: %w", seg.first, err)
		}
		p = p[n:]
	}
	return nil
}

// writable returns the active segment, rolling to a new one when it is full.
func (l *Log) writable() (*segment, error) {
	l.mu.RLock()
	closed, n := l.closed, len(l.segs)
	var last *segment
	if n > 0 {
		last = l.segs[n-1]
	}
	l.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if last != nil && last.size < l.opt.SegmentBytes {
		return last, nil
	}
	return l.roll()
}

func (l *Log) roll() (*segment, error) {
	l.mu.RLock()
	first := l.end
	l.mu.RUnlock()
	f, err := os.OpenFile(segmentPath(l.dir, first), os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create segment %d: %w", first, err)
	}
	// Reserve the blocks without changing the size, so the file size stays
	// the exact end of data and a crash leaves no zero-filled tail to guess at.
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, l.opt.SegmentBytes); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("preallocate segment %d: %w", first, err)
	}
	if err := syncDir(l.dir); err != nil {
		f.Close()
		return nil, err
	}
	seg := &segment{first: first}
	l.mu.Lock()
	if l.active != nil {
		l.syncer.retire(l.active)
	}
	l.active = f
	l.segs = append(l.segs, seg)
	l.mu.Unlock()
	l.trim()
	return seg, nil
}

func (l *Log) advance(seg *segment, n int64) {
	if n == 0 {
		return
	}
	l.mu.Lock()
	seg.size += n
	l.end += n
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	l.syncer.dirty(l.end)
}

// trim removes the oldest segments while the others hold MaxBytes, so disk use
// stays within MaxBytes plus one segment. A Cursor that has a removed segment
// open keeps reading it (the inode lives on); one that must open it gets
// ErrTrimmed.
func (l *Log) trim() {
	l.mu.Lock()
	var victims []int64
	total := int64(0)
	for _, s := range l.segs {
		total += s.size
	}
	for len(l.segs) > 1 && total-l.segs[0].size >= l.opt.MaxBytes {
		total -= l.segs[0].size
		victims = append(victims, l.segs[0].first)
		l.segs = l.segs[1:]
		l.first = l.segs[0].first
	}
	l.mu.Unlock()
	for _, first := range victims {
		os.Remove(segmentPath(l.dir, first))
	}
}

// locate returns the segment holding off and how many bytes can be read there.
func (l *Log) locate(off int64) (first, n int64, err error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return 0, 0, ErrClosed
	}
	if off < l.first || off > l.end {
		return 0, 0, fmt.Errorf("offset %d outside [%d, %d]: %w", off, l.first, l.end, ErrTrimmed)
	}
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].end() > off })
	if i == len(l.segs) {
		return 0, 0, nil // off == end: nothing yet
	}
	return l.segs[i].first, l.segs[i].end() - off, nil
}

// Close stops the syncer after a last sync and wakes every waiter.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.changed)
	l.mu.Unlock()
	err := l.syncer.stop(l.active)
	l.active = nil
	return err
}

// Remove closes the log and deletes its directory: the generation is over.
func (l *Log) Remove() error {
	l.Close()
	if err := os.RemoveAll(l.dir); err != nil {
		return fmt.Errorf("remove log dir %s: %w", l.dir, err)
	}
	return nil
}
