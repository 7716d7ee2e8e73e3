package backlog

import (
	"errors"
	"testing"
	"time"
)

// Store.Close while the writer rolls segments: a rolling append holds the
// log's writer lock and asks the store, through Hold, what the snapshot
// needs; Close once held the store's lock while it waited for that append.
func TestStoreCloseWhileRollingNeverHangs(t *testing.T) {
	opt := testOptions()
	opt.Log.SegmentBytes = 4 << 10
	opt.Log.MaxBytes = 16 << 10
	opt.Log.Fsync = FsyncNo
	chunk := pattern(1<<10, 7)
	for round := 0; round < 100; round++ {
		s := newStore(t, t.TempDir(), opt, 0)
		appended := make(chan int)
		go func() {
			n := 0
			for s.Append(chunk) == nil {
				n++
			}
			appended <- n
		}()
		time.Sleep(time.Duration(round%5) * 100 * time.Microsecond)
		closed := make(chan error, 1)
		go func() { closed <- s.Close() }()
		select {
		case err := <-closed:
			if err != nil && !errors.Is(err, ErrClosed) {
				t.Fatalf("round %d: close: %v", round, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: Store.Close hung behind a rolling append", round)
		}
		select {
		case <-appended:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: the appender never saw the close", round)
		}
	}
}

// An append refused after Close leaves no trace: no time noted (INFO's
// last append), no time index file reopened.
func TestAppendAfterCloseLeavesNoTrace(t *testing.T) {
	s := newStore(t, t.TempDir(), testOptions(), 0)
	l := s.Log()
	if err := s.Append([]byte("x")); err != nil {
		t.Fatal(err)
	}
	last := l.LastAppend()
	s.Close()
	time.Sleep(1100 * time.Millisecond) // a new second: an append would note a time point
	if err := s.Append([]byte("y")); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
	if got := l.LastAppend(); !got.Equal(last) {
		t.Fatalf("last append moved from %s to %s by an append refused after Close", last, got)
	}
	l.times.fmu.Lock()
	defer l.times.fmu.Unlock()
	if l.times.f != nil {
		t.Fatal("an append after Close reopened the time index")
	}
}

// A meta writer that comes after Close writes nothing: Close no longer
// holds the store's lock while the log closes, so it must say no itself.
func TestStoreRefusesMetaWritesAfterClose(t *testing.T) {
	dir := t.TempDir()
	s := newStore(t, dir, testOptions(), 0)
	epoch := s.State().Epoch
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	w, err := s.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("REDIS0010fake"))
	if err := s.Reset(RandomReplID(), 100, w); !errors.Is(err, ErrClosed) {
		t.Fatalf("Reset after Close: %v", err)
	}
	if err := s.ShiftID(RandomReplID()); !errors.Is(err, ErrClosed) {
		t.Fatalf("ShiftID after Close: %v", err)
	}
	if got := s.State().Epoch; got != epoch {
		t.Fatalf("epoch %d after Close, was %d", got, epoch)
	}
	if s.Close() != nil {
		t.Fatal("a second Close failed")
	}
	// The data dir is free and holds the history as Close left it.
	again, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if got := again.State().Epoch; got != epoch {
		t.Fatalf("reopened at epoch %d, closed at %d", got, epoch)
	}
}

// Store.Close in the middle of everything the writer and the readers do
// at once: appends that roll and trim (retention's history prune), a
// snapshot adopted, IDs shifted, and INFO's readers of the state and the
// time index. Close returns, every actor sees ErrClosed or finishes, and
// the data dir reopens at a consistent state: the meta's offset is the
// log's end, and its snapshot is one the history keeps.
func TestStoreCloseAmidWritersAndReaders(t *testing.T) {
	opt := testOptions()
	opt.Log.SegmentBytes = 4 << 10
	opt.Log.MaxBytes = 16 << 10
	opt.Log.Fsync = FsyncNo
	opt.SnapshotKeep = 3
	chunk := pattern(1<<10, 3)
	for round := 0; round < 30; round++ {
		dir := t.TempDir()
		s := newStore(t, dir, opt, 0)
		stop := make(chan struct{})
		done := make(chan struct{}, 3)
		go func() { // the writer: appends, adopts, shifts, as the link does
			defer func() { done <- struct{}{} }()
			for i := 0; ; i++ {
				if s.Append(chunk) != nil {
					return
				}
				switch i % 7 {
				case 3:
					w, err := s.NewSnapshot()
					if err != nil {
						return
					}
					w.Write([]byte("REDIS0010 snapshot"))
					if err := s.AdoptSnapshot(s.State().ReplID, s.State().MasterReplOffset(), w); err != nil {
						if !errors.Is(err, ErrClosed) {
							t.Errorf("round %d: adopt: %v", round, err)
						}
						return
					}
				case 5:
					if err := s.ShiftID(RandomReplID()); err != nil {
						if !errors.Is(err, ErrClosed) {
							t.Errorf("round %d: shift: %v", round, err)
						}
						return
					}
				}
			}
		}()
		for r := 0; r < 2; r++ {
			go func() { // INFO and /metrics
				defer func() { done <- struct{}{} }()
				for {
					select {
					case <-stop:
						return
					default:
					}
					st, l := s.View()
					if l != nil {
						l.TimeAt(st.MasterReplOffset())
						l.LastAppend()
						l.AppendStuck(time.Now())
						l.Bounds()
					}
				}
			}()
		}
		time.Sleep(time.Duration(round%6) * time.Millisecond)
		closed := make(chan error, 1)
		go func() { closed <- s.Close() }()
		select {
		case err := <-closed:
			if err != nil && !errors.Is(err, ErrClosed) {
				t.Fatalf("round %d: close: %v", round, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: Store.Close hung", round)
		}
		close(stop)
		for i := 0; i < 3; i++ {
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("round %d: an actor never saw the close", round)
			}
		}
		again, err := Open(dir, opt)
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		st, l := again.View()
		if l == nil {
			t.Fatalf("round %d: reopened with no log", round)
		}
		if _, end := l.Bounds(); end != st.End {
			t.Fatalf("round %d: reopened with the meta at %d, the log at %d", round, st.End, end)
		}
		if err := again.Close(); err != nil {
			t.Fatalf("round %d: close again: %v", round, err)
		}
	}
}
