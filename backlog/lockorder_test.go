package backlog

import (
	"errors"
	"math/rand"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Everything that takes the store's and the log's locks runs at once: the
// writer (appends that roll segments and trim, which asks the store what
// the snapshot holds), resumes after cuts, SyncNow, the syncer with fsyncs
// failing now and then (cuts), senders from memory and disk, parked
// followers the writer pushes to, a sender that finds damage (a cut), the
// scrub, snapshot adoption, INFO's reads, and Close in the middle of it.
// A lock taken against the order in doc.go deadlocks here sooner or
// later; the watchdog then fails with every goroutine's stack.
func TestLockOrderUnderEverythingAtOnce(t *testing.T) {
	for round := 0; round < 6; round++ {
		lockOrderRound(t, round)
	}
}

func lockOrderRound(t *testing.T, round int) {
	var fail atomic.Bool
	opt := testOptions()
	opt.Log.SegmentBytes = 4 << 10
	opt.Log.MaxBytes = 32 << 10
	opt.Log.HoldMaxBytes = 16 << 10
	opt.Log.Sync = failingSync(&fail, ".seg")
	opt.ScrubRate = 1 << 30
	opt.ScrubPause = time.Millisecond
	s := newStore(t, t.TempDir(), opt, 0)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	actor := func(f func(rng *rand.Rand)) {
		wg.Add(1)
		seed := int64(round*100 + 1 + len(t.Name()))
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for {
				select {
				case <-stop:
					return
				default:
				}
				f(rng)
			}
		}()
	}
	chunk := pattern(700, byte(round))
	actor(func(*rand.Rand) { // the upstream link
		if err := s.Append(chunk); err != nil && !errors.Is(err, ErrClosed) {
			s.Resume()
		}
	})
	actor(func(*rand.Rand) { s.SyncNow() }) // the ACK loop, for WAIT
	actor(func(rng *rand.Rand) {            // a sick disk, now and then
		fail.Store(rng.Intn(20) == 0)
		time.Sleep(time.Millisecond)
	})
	for i := 0; i < 4; i++ {
		park := i%2 == 0
		actor(func(rng *rand.Rand) { sendAWhile(s, park, rng, stop) })
	}
	actor(func(rng *rand.Rand) { // a sender that finds damage
		time.Sleep(time.Duration(rng.Intn(50)) * time.Millisecond)
		if l := s.Log(); l != nil {
			l.mu.RLock()
			var seg *segment
			if len(l.segs) > 1 {
				seg = l.segs[rng.Intn(len(l.segs)-1)]
			}
			l.mu.RUnlock()
			if seg != nil {
				l.damaged(seg, "injected by the test")
			}
		}
	})
	actor(func(*rand.Rand) { // the refresher
		time.Sleep(5 * time.Millisecond)
		if w, err := s.NewSnapshot(); err == nil {
			w.Write([]byte("REDIS0010 snapshot"))
			s.AdoptSnapshot(s.State().ReplID, s.State().MasterReplOffset(), w)
		}
	})
	actor(func(*rand.Rand) { // INFO and /metrics
		st, l := s.View()
		s.SyncStats()
		s.AppendStuck(time.Now())
		if l != nil {
			l.TimeAt(st.MasterReplOffset())
			l.LastAppend()
		}
	})
	time.Sleep(time.Duration(100+50*round) * time.Millisecond)
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(stop)
		wg.Wait()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(2 * time.Minute):
		buf := make([]byte, 8<<20)
		t.Fatalf("round %d: deadlock (a lock taken against the order in doc.go?):\n%s", round, buf[:runtime.Stack(buf, true)])
	}
}

// sendAWhile follows the log as a replica's sender does, from memory, from
// disk or parked with the writer, until it falls out of the log or stop.
func sendAWhile(s *Store, park bool, rng *rand.Rand, stop <-chan struct{}) {
	st, l := s.View()
	if l == nil {
		return
	}
	c, err := l.NewCursor(st.First + rng.Int63n(st.End-st.First+1))
	if err != nil {
		return
	}
	defer c.Close()
	pushes := 0 // the writer's alone, under follow.mu
	f := NewFollower(func(p []byte, _ int64) int {
		pushes++
		return len(p) * (pushes % 4) / 3 // a short push now and then
	})
	discard := func(p []byte) (int, error) { return len(p), nil }
	for i := 0; i < 200; i++ {
		if _, ok, err := c.SendRecent(discard, 1<<10); ok || err != nil {
			if err != nil {
				return
			}
			continue
		}
		n, err := c.Send(discardWriter{}, 1<<12)
		if err != nil {
			return
		}
		if n > 0 || !park || !c.Park(f) {
			continue
		}
		select {
		case <-f.Woken():
		case <-stop:
		case <-time.After(10 * time.Millisecond):
		}
		c.Unpark(f)
	}
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }

// Changed and SyncNow do what their docs say about cuts: a failed fsync's
// cut closes the channel a waiter took (it must look at End again, which
// went back), and SyncNow returns with the bytes past Durable not synced
// but cut.
func TestChangedAndSyncNowAtACut(t *testing.T) {
	var fail atomic.Bool
	l := openFailingLog(t, &fail)
	if err := l.Append(pattern(100, 1)); err != nil {
		t.Fatal(err)
	}
	l.SyncNow()
	if err := l.Append(pattern(100, 2)); err != nil {
		t.Fatal(err)
	}
	changed := l.Changed()
	fail.Store(true)
	l.SyncNow()
	select {
	case <-changed:
	default:
		t.Fatal("a cut left Changed open")
	}
	if _, end := l.Bounds(); end != 101 || l.Durable() != 101 {
		t.Fatalf("after the failed SyncNow: end %d, durable %d, want both 101", end, l.Durable())
	}
}
