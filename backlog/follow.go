package backlog

import "sync"

// pushBudget bounds what one append writes to followers itself: the
// writer also owes the master its next read, so past this many bytes the
// remaining followers are woken to send for themselves. With many replicas
// on a busy link a larger budget cost more CPU per replica than it saved
// (bench/README.md, fanout-scale): their sockets take only part of a big
// push, which then costs a write on top of the wakeup.
const pushBudget = 1 << 20

// Follower is a caught-up reader that the writer feeds itself: after an
// append it hands the new bytes to the follower's Push, on the writer's own
// goroutine, instead of waking the reader's goroutine to send them. That
// saves a wakeup and a thread switch per append and per replica, which is
// most of what relaying costs once the bytes are in the page cache.
//
// A follower is parked (owned by the log, fed by the writer) or not
// (owned by its reader, which sends with its Cursor). Park hands it over
// only when the cursor is at the end; the writer hands it back, through
// Woken, as soon as one push is short or fails, or at a cut or Close; the
// reader may take it back at any time with Unpark.
type Follower struct {
	// push must not block: it writes what fits now and says how much
	// that was. Whatever it leaves is the reader's to send.
	push   func(p []byte, off int64) int
	woken  chan struct{}
	off    int64 // guarded by Log.follow.mu while parked
	parked bool  // guarded by Log.follow.mu
}

// NewFollower makes a follower whose bytes go through push, which must
// never block (a non-blocking socket write).
func NewFollower(push func(p []byte, off int64) int) *Follower {
	return &Follower{push: push, woken: make(chan struct{}, 1)}
}

// Woken is signalled when the writer hands the follower back.
func (f *Follower) Woken() <-chan struct{} { return f.woken }

// followers is the log's set of parked followers.
type followers struct {
	mu     sync.Mutex
	set    []*Follower
	closed bool // the log closed: nobody parks any more
}

// Park hands f to the writer if c is at the end of the log with no cut
// since it last read; the caller then waits on f.Woken (and its own
// context) and calls Unpark before using c again. False means c has bytes
// to send, or a cut to notice: the caller sends instead.
func (c *Cursor) Park(f *Follower) bool {
	l := c.log
	l.follow.mu.Lock()
	defer l.follow.mu.Unlock()
	l.mu.RLock()
	atEnd := !l.closed && l.end == c.off && l.cuts.Load() == c.cuts
	l.mu.RUnlock()
	if !atEnd || l.follow.closed || f.parked {
		return false
	}
	// A caught-up reader needs no file: holding one while parked would
	// keep a segment that retention removes on disk for as long as the
	// replica keeps up.
	c.closeFile()
	f.off, f.parked = c.off, true
	l.follow.set = append(l.follow.set, f)
	return true
}

// Unpark takes f back from the writer and moves c past what the writer
// sent for it. It is safe whether or not the writer already let go.
func (c *Cursor) Unpark(f *Follower) {
	l := c.log
	l.follow.mu.Lock()
	if f.parked {
		l.follow.remove(f)
	}
	off := f.off
	l.follow.mu.Unlock()
	select {
	case <-f.woken: // a wakeup for a park that is over
	default:
	}
	c.skipTo(off)
}

// skipTo moves the cursor to off, which others sent for it from memory.
func (c *Cursor) skipTo(off int64) {
	c.off = off
	c.keep()
}

// remove takes f out of the set; mu is held.
func (fs *followers) remove(f *Follower) {
	f.parked = false
	for i, g := range fs.set {
		if g == f {
			last := len(fs.set) - 1
			fs.set[i] = fs.set[last]
			fs.set[last] = nil
			fs.set = fs.set[:last]
			return
		}
	}
}

// wakeLocked hands f back to its reader; mu is held.
func (fs *followers) wakeLocked(f *Follower) {
	fs.remove(f)
	select {
	case f.woken <- struct{}{}:
	default:
	}
}

// push feeds the bytes of one append, which began at start, to every
// parked follower: each keeps its place while its pushes go through
// whole, and is handed back on the first short one. Only the writer calls
// it, after the bytes and their index record are written.
func (l *Log) push(start int64, data []byte) {
	fs := &l.follow
	fs.mu.Lock()
	defer fs.mu.Unlock()
	budget := pushBudget
	for i := 0; i < len(fs.set); {
		f := fs.set[i]
		if f.off != start || budget < len(data) {
			fs.wakeLocked(f) // swaps the last follower into i
			continue
		}
		budget -= len(data)
		n := f.push(data, f.off)
		f.off += int64(n)
		if n < len(data) {
			fs.wakeLocked(f)
			continue
		}
		i++
	}
}

// unparkAll hands every follower back, at a cut or Close: they must look
// at the log again. After Close nobody parks.
func (l *Log) unparkAll(closing bool) {
	fs := &l.follow
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if closing {
		fs.closed = true
	}
	for len(fs.set) > 0 {
		fs.wakeLocked(fs.set[0])
	}
}
