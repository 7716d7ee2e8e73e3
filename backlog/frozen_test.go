package backlog

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/fsfreeze"
)

// Readers ask the time index for times (INFO's backlog age, /metrics)
// while the writer adds to its file: a point written on a frozen disk must
// not keep them waiting, and the stuck append shows in AppendStuck.
func TestTimesAnswerWhileTheirFileWaitsOnTheDisk(t *testing.T) {
	mnt := fsfreeze.Mount(t)
	opt := testOptions()
	opt.Log.Fsync = FsyncNo
	s := newStore(t, filepath.Join(mnt, "data"), opt, 0)
	defer s.Close()
	l := s.Log()
	if err := s.Append([]byte("before")); err != nil {
		t.Fatal(err)
	}
	fr := fsfreeze.Freeze(t, mnt, 3*time.Second)
	// The first append of a wall-clock second writes a point to the time
	// index before its bytes.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 10*time.Millisecond)))
	appended := make(chan error, 1)
	go func() { appended <- s.Append([]byte("during")) }()
	time.Sleep(200 * time.Millisecond) // the append waits on the disk by now
	answered := make(chan struct{})
	go func() {
		l.TimeAt(1)
		l.LastAppend()
		close(answered)
	}()
	select {
	case <-answered:
	case <-time.After(time.Second):
		t.Error("the time index did not answer while the writer's point waited on the frozen disk")
	}
	if stuck := l.AppendStuck(time.Now()); stuck < 100*time.Millisecond || fr.Thawed() {
		t.Errorf("AppendStuck %s during the freeze (thawed already: %v)", stuck, fr.Thawed())
	}
	fr.Wait(t)
	if err := <-appended; err != nil {
		t.Fatal(err)
	}
	if stuck := l.AppendStuck(time.Now()); stuck != 0 {
		t.Errorf("AppendStuck %s after the append", stuck)
	}
	if got := string(readAll(t, l, 1)); got != "beforeduring" {
		t.Fatalf("log holds %q", got)
	}
}
