package backlog

import (
	"errors"
	"os"
	"strings"
	"sync/atomic"
	"testing"
)

// The upstream stream holds the session's *Log for the whole session
// (upstream/stream.go). That is sound only while nothing but Reset
// replaces the store's log, and while a holder of a replaced log cannot
// append to it unnoticed. A snapshot adoption, an ID shift, a failed
// fsync's cut and Resume, and a damage cut keep the same log; Reset
// replaces it and closes the old one, whose next append fails with
// ErrClosed.
func TestOnlyResetReplacesTheSessionLog(t *testing.T) {
	dir := t.TempDir()
	var fail atomic.Bool
	opt := testOptions()
	opt.Log.Fsync = FsyncEverySec
	opt.Log.Sync = func(f *os.File) error {
		if strings.HasSuffix(f.Name(), ".seg") && fail.CompareAndSwap(true, false) {
			return errors.New("injected EIO")
		}
		return f.Sync()
	}
	s := newStore(t, dir, opt, 0)
	defer s.Close()
	held := s.Log()
	same := func(what string) {
		t.Helper()
		if s.Log() != held {
			t.Fatalf("%s replaced the store's log: a stream holding the session's log would append to a stale one", what)
		}
	}
	if err := held.Append(pattern(3000, 1)); err != nil {
		t.Fatal(err)
	}
	held.SyncNow()

	st := s.State()
	w, err := s.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("REDIS0010fake"))
	if err := s.AdoptSnapshot(st.ReplID, st.End-1, w); err != nil {
		t.Fatal(err)
	}
	same("AdoptSnapshot")

	if err := s.ShiftID(RandomReplID()); err != nil {
		t.Fatal(err)
	}
	same("ShiftID")

	if err := held.Append(pattern(500, 2)); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	held.SyncNow() // cut back to the durable end
	if err := held.Append([]byte("x")); !errors.Is(err, ErrRewound) {
		t.Fatalf("append after the cut: %v, want ErrRewound", err)
	}
	same("a failed fsync's cut")
	s.Resume()
	same("Resume")
	if err := held.Append(pattern(500, 2)); err != nil {
		t.Fatal(err)
	}

	held.damaged(held.segs[len(held.segs)-1], "test damage")
	same("a damage cut")
	s.Resume()

	w, err = s.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("REDIS0010fake"))
	if err := s.Reset(RandomReplID(), 100000, w); err != nil {
		t.Fatal(err)
	}
	if s.Log() == held {
		t.Fatal("Reset kept the old log")
	}
	if err := held.Append([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("append to the log Reset replaced: %v, want ErrClosed", err)
	}
}
