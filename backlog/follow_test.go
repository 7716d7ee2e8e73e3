package backlog

import (
	"bytes"
	"sync/atomic"
	"testing"
	"time"
)

// sink is a follower's socket: it takes up to room bytes per push.
type sink struct {
	got  bytes.Buffer
	room int
}

func (s *sink) follower() *Follower {
	return NewFollower(func(p []byte, off int64) int {
		k := min(len(p), s.room)
		s.got.Write(p[:k])
		return k
	})
}

// parked is a cursor at off of l whose follower, writing into a roomy
// sink, is parked with the writer.
func parked(t *testing.T, l *Log, off int64) (*Cursor, *Follower, *sink) {
	t.Helper()
	c, err := l.NewCursor(off)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	out := &sink{room: 1 << 20}
	f := out.follower()
	if !c.Park(f) {
		t.Fatal("a cursor at the end could not park")
	}
	return c, f, out
}

func woken(f *Follower) bool {
	select {
	case <-f.Woken():
		return true
	case <-time.After(100 * time.Millisecond):
		return false
	}
}

// A parked follower gets each append from the writer itself and stays
// parked; a short push hands it back with the cursor past what went out,
// and the rest comes from memory: no byte lost or repeated.
func TestFollowerFedThenHandedBack(t *testing.T) {
	s := newStore(t, t.TempDir(), testOptions(), 0)
	defer s.Close()
	c, f, out := parked(t, s.Log(), 1)
	s.Append([]byte("hello "))
	s.Append([]byte("world"))
	if woken(f) {
		t.Fatal("a follower whose pushes went through was handed back")
	}
	out.room = 3
	s.Append([]byte(", again"))
	if !woken(f) {
		t.Fatal("a short push did not hand the follower back")
	}
	c.Unpark(f)
	if c.Offset() != 1+int64(len("hello world, a")) {
		t.Fatalf("cursor at %d after the pushes", c.Offset())
	}
	if n, ok, err := c.SendRecent(out.got.Write, 1<<20); !ok || err != nil || n != 4 {
		t.Fatalf("rest from memory: %d, %v, %v", n, ok, err)
	}
	if out.got.String() != "hello world, again" {
		t.Fatalf("follower got %q", out.got.String())
	}
}

// Park refuses a cursor with bytes to send, or one that has not yet seen a
// cut; a cut and Close hand every parked follower back, and after Close
// nobody parks.
func TestFollowersHandedBackAtCutAndClose(t *testing.T) {
	var fail atomic.Bool
	l := openFailingLog(t, &fail)
	l.Append([]byte("a"))
	l.SyncNow() // durable: "a"
	l.Append([]byte("bc"))
	c, err := l.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	out := &sink{room: 1 << 20}
	f := out.follower()
	if c.Park(f) {
		t.Fatal("parked with 3 bytes to send")
	}
	c.Send(&out.got, 1<<20)
	if !c.Park(f) {
		t.Fatal("could not park at the end")
	}
	fail.Store(true)
	l.SyncNow() // fails: the log is cut back to "a"
	if !woken(f) {
		t.Fatal("a cut did not hand the follower back")
	}
	c.Unpark(f)
	fail.Store(false)
	l.Resume()
	l.Append([]byte("bc")) // the master sends them again
	if c.Park(f) {
		t.Fatal("parked before noticing the cut")
	}
	if n, err := c.Send(&out.got, 1<<20); n != 0 || err != nil {
		t.Fatalf("send at the end after the cut: %d, %v", n, err)
	}
	if !c.Park(f) {
		t.Fatal("could not park after noticing the cut")
	}
	l.Close()
	if !woken(f) {
		t.Fatal("Close did not hand the follower back")
	}
	c.Unpark(f)
	if c.Park(f) {
		t.Fatal("parked on a closed log")
	}
}

// One append feeds followers up to the push budget; the others are woken
// to send for themselves, so a link with many replicas still reads on.
func TestPushBudgetWakesTheRest(t *testing.T) {
	s := newStore(t, t.TempDir(), testOptions(), 0)
	defer s.Close()
	l := s.Log()
	batch := bytes.Repeat([]byte("x"), 900)
	var fs []*Follower
	var cs []*Cursor
	var sinks []*sink
	for i := 0; i < pushBudget/len(batch)+3; i++ {
		c, f, out := parked(t, l, 1)
		fs, cs, sinks = append(fs, f), append(cs, c), append(sinks, out)
	}
	s.Append(batch)
	fed, handed := 0, 0
	for i, f := range fs {
		select {
		case <-f.Woken():
			handed++
			cs[i].Unpark(f)
			if n, ok, _ := cs[i].SendRecent(sinks[i].got.Write, 1<<20); !ok || n != int64(len(batch)) {
				t.Fatalf("handed-back follower sent %d from memory", n)
			}
		default:
			fed++
		}
	}
	if fed != pushBudget/len(batch) || handed != 3 {
		t.Fatalf("fed %d, handed back %d: want %d and 3", fed, handed, pushBudget/len(batch))
	}
}
