package backlog

import (
	"bytes"
	"math/rand"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// cutOnWrite is a replica's socket that, at its first write, has the log
// cut under the send in progress (an fsync failing meanwhile).
type cutOnWrite struct {
	got bytes.Buffer
	cut func()
}

func (w *cutOnWrite) Write(p []byte) (int, error) {
	if w.cut != nil {
		w.cut()
		w.cut = nil
	}
	return w.got.Write(p)
}

// A cut that truncates the segment while a lagging reader copies from it
// (an fsync failed meanwhile) is no disk error: the reader stops where the
// file now ends, notices the cut at its next send and waits for the
// master's resent bytes, exactly as if the cut had come before its send.
// A replica must not be dropped for it.
func TestCutDuringSendIsNoError(t *testing.T) {
	var fail atomic.Bool
	dir := t.TempDir()
	opt := logOptions(dir, failingSync(&fail, ".seg"), nil)
	opt.SegmentBytes = 1 << 20
	l, err := OpenLog(filepath.Join(dir, "log"), 1, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	manualSyncs(l)

	stream := make([]byte, 200<<10)
	rand.New(rand.NewSource(3)).Read(stream)
	durable := 100 << 10
	l.Append(stream[:durable])
	l.SyncNow()
	l.Append(stream[durable:])
	c, err := l.NewCursor(1 + 90<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w := &cutOnWrite{cut: func() {
		fail.Store(true)
		l.SyncNow() // fails: the log is cut back to durable, truncating the file
		fail.Store(false)
	}}
	w.got.Write(stream[:90<<10])
	if _, err := c.Send(w, 1<<20); err != nil {
		t.Fatalf("a send cut short by a cut failed: %v", err)
	}
	l.Resume()
	l.Append(stream[durable:]) // the master sends them again
	for c.Offset() < int64(len(stream))+1 {
		n, err := c.Send(w, 1<<20)
		if err != nil {
			t.Fatalf("send after the cut at %d: %v", c.Offset(), err)
		}
		if n == 0 {
			t.Fatalf("stuck at %d before the end %d", c.Offset(), len(stream)+1)
		}
	}
	if !bytes.Equal(w.got.Bytes(), stream) {
		t.Fatal("the reader's bytes differ from the stream: skipped or repeated at the cut")
	}
}
