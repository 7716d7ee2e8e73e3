package fanout

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/replproxy/replproxy/backlog"
)

// A caught-up compressed replica is fed by the upstream writer too, as a
// plain one is (see follower), but the writer only copies each append
// into the replica's pushBuffer: the encoder has framing state that a
// write stopping halfway would break, so only the replica's own goroutine
// compresses and writes. That goroutine wakes once per block, not once
// per append: when the buffer passes pushWakeBytes, or when the oldest
// byte not yet on the wire has waited zstdFlushDelay. Waking per append
// (a channel close, a backlog read and a timer per upstream read) cost
// the sending proxy more than s2 itself (bench/README.md, "compress").
const (
	// pushWakeBytes is how much the writer gathers before it wakes the
	// sender early: a quarter of pushMaxBytes, so the writer keeps
	// filling while the sender compresses.
	pushWakeBytes = 256 << 10
	// pushMaxBytes bounds what one replica's buffer holds. A push that
	// finds it full is short, and the replica goes back to its cursor,
	// whose lag lives in the backlog files, not in memory. A replica
	// holds at most two such buffers (one the writer fills, one its
	// sender compresses), and none once it has fallen behind.
	pushMaxBytes = 1 << 20
)

// pushBuffer holds what the writer pushed to a parked compressed replica
// and its sender has not yet taken. The two buffers alternate: the writer
// fills one while the sender compresses the other.
type pushBuffer struct {
	mu    sync.Mutex
	buf   []byte // guarded by mu
	spare []byte // guarded by mu: the sender's last buffer, for reuse
	// armed says the sender already keeps a deadline for what is
	// pending, so a byte landing in the empty buffer need not wake it.
	armed bool // guarded by mu
	// wake is signalled on a first byte the sender has no deadline for,
	// and when the buffer passes pushWakeBytes.
	wake chan struct{}
}

// put copies what fits of p; the writer calls it, and it never blocks.
func (pb *pushBuffer) put(p []byte) int {
	pb.mu.Lock()
	had := len(pb.buf)
	n := min(len(p), pushMaxBytes-had)
	pb.buf = append(pb.buf, p[:n]...)
	wake := n > 0 && ((had == 0 && !pb.armed) || (had < pushWakeBytes && had+n >= pushWakeBytes))
	pb.mu.Unlock()
	if wake {
		pb.signal()
	}
	return n
}

func (pb *pushBuffer) signal() {
	select {
	case pb.wake <- struct{}{}:
	default:
	}
}

// take hands the sender everything pending; armed says whether it keeps
// a deadline for what comes next. It returns nil when nothing is pending.
func (pb *pushBuffer) take(armed bool) []byte {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	pb.armed = armed
	if len(pb.buf) == 0 {
		return nil
	}
	p := pb.buf
	pb.buf, pb.spare = pb.spare[:0], nil
	return p
}

// pending says how many bytes wait, and sets armed as take does.
func (pb *pushBuffer) pending(armed bool) int {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	pb.armed = armed
	return len(pb.buf)
}

// giveBack returns a buffer the sender is done with.
func (pb *pushBuffer) giveBack(p []byte) {
	pb.mu.Lock()
	pb.spare = p[:0]
	pb.mu.Unlock()
}

// release drops both buffers; only the sender calls it, unparked.
func (pb *pushBuffer) release() {
	pb.mu.Lock()
	pb.buf, pb.spare = nil, nil
	pb.mu.Unlock()
}

// compressedFollower is a compressed replica's follower and its buffer.
type compressedFollower struct {
	f  *backlog.Follower
	pb *pushBuffer
}

// compressedFollower lets the writer feed this compressed replica while it
// is caught up; nil for a paced one, which must wait for its limiter.
func (r *replica) compressedFollower() *compressedFollower {
	if r.cw == nil || r.limiter != nil || r.watch != nil {
		// A watched stream is scanned by its own sender.
		return nil
	}
	pb := &pushBuffer{wake: make(chan struct{}, 1)}
	f := backlog.NewFollower(func(p []byte, off int64) int { return r.pushCompressed(pb, p, off) })
	return &compressedFollower{f: f, pb: pb}
}

// pushCompressed is the writer's push: it copies what fits of p, which
// begins at off, into the buffer.
func (r *replica) pushCompressed(pb *pushBuffer, p []byte, off int64) int {
	// Raised before the bytes are in the buffer, not after: the sender may
	// take them at once, and the replica acknowledge them, before the
	// writer gets to its next instruction; an honest ACK read against the
	// old maxAck would drop the replica as a liar. What readAcks counts
	// stays bounded by sentOff, which only the sender moves.
	r.maxAck.Store(off + int64(len(p)) - 1)
	n := pb.put(p)
	if n < len(p) {
		// The rest is its cursor's to send, and nothing of it left yet.
		r.maxAck.Store(off + int64(n) - 1)
	}
	return n
}

// followCompressed compresses what the writer pushes to the parked
// replica, in pieces of up to pushMaxBytes, flushing at most
// zstdFlushDelay after a byte arrived, until the writer hands the
// follower back (a full buffer, a cut, Close) or ctx ends. On return the
// follower is unparked, the cursor is past every byte pushed, and each of
// them is in the encoder (pf says what is not yet flushed).
func (r *replica) followCompressed(ctx context.Context, cur *backlog.Cursor, cf *compressedFollower, pf *pendingFlush) error {
	// What the encoder holds from before the park has its deadline.
	cf.pb.pending(pf.bytes > 0)
	r.fedByWriter.Store(true)
	defer r.fedByWriter.Store(false)
	for {
		var err error
		select {
		case <-ctx.Done():
			cur.Unpark(cf.f)
			return context.Cause(ctx)
		case <-cf.f.Woken():
			cur.Unpark(cf.f)
			// The writer let go: nothing lands in the buffer any more. A
			// replica that fell behind sends from its cursor and needs no
			// buffers until it parks again.
			err := r.compressPushed(cf.pb, pf, false)
			cf.pb.release()
			return err
		case <-cf.pb.wake:
			if pf.bytes == 0 && !pf.held {
				// A first byte: it may wait for more to share its block.
				pf.held, pf.deadline = true, time.Now().Add(zstdFlushDelay)
			}
			if cf.pb.pending(true) >= pushWakeBytes || !time.Now().Before(pf.deadline) {
				err = r.compressPushed(cf.pb, pf, true)
			}
		case <-pf.due():
			if err = r.compressPushed(cf.pb, pf, true); err == nil {
				err = r.flushNow(pf)
			}
		}
		if err != nil {
			cur.Unpark(cf.f)
			return err
		}
		if pf.bytes == 0 && !pf.held && cf.pb.pending(false) > 0 {
			// Flushed with no deadline left: what landed meanwhile, while
			// the buffer counted the sender as armed, woke nobody.
			cf.pb.signal()
		}
	}
}

// compressPushed puts what the writer pushed into the encoder and counts it
// as sent; the flush follows the pending rule (noteSent). armed says
// whether the sender stays parked, keeping a deadline for what comes next.
func (r *replica) compressPushed(pb *pushBuffer, pf *pendingFlush, armed bool) error {
	p := pb.take(armed)
	if p == nil {
		pf.held = false
		return nil
	}
	defer pb.giveBack(p)
	r.conn.SetWriteDeadline(time.Now().Add(r.srv.cfg.ReplTimeout))
	n, err := r.cw.Write(p)
	r.sentBytes.Add(int64(n))
	r.sentOff.Add(int64(n))
	r.srv.stats.SentFromMemory.Add(int64(n))
	if err != nil {
		return fmt.Errorf("send %s stream: %w", r.codec, err)
	}
	return r.noteSent(pf, int64(n))
}
