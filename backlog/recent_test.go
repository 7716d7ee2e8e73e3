package backlog

import (
	"bytes"
	"errors"
	"math/rand"
	"testing"
)

// A cursor that moves between the memory path (the last append) and the
// disk path at every kind of boundary — the start of a batch, the middle of
// one after a short send, a batch spanning two segments, a batch it fell
// behind — receives every byte exactly once, in order.
func TestRecentAndDiskHandOverAtBatchBoundaries(t *testing.T) {
	s := newStore(t, t.TempDir(), testOptions(), 0) // 1000-byte segments
	defer s.Close()
	l := s.Log()
	c, err := l.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	rng := rand.New(rand.NewSource(1))
	var want, got bytes.Buffer
	var fromMem, fromDisk int64
	drain := func(max int64, preferMemory bool) {
		for {
			var n int64
			var ok bool
			var err error
			if preferMemory {
				n, ok, err = c.SendRecent(got.Write, max)
				fromMem += n
			}
			if !ok {
				n, err = c.Send(&got, max)
				fromDisk += n
			}
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				return
			}
		}
	}
	for i := 0; i < 400; i++ {
		p := make([]byte, 1+rng.Intn(700)) // some batches cross a segment end
		rng.Read(p)
		if err := s.Append(p); err != nil {
			t.Fatal(err)
		}
		want.Write(p)
		switch rng.Intn(4) {
		case 0: // caught up: the whole batch from memory
			drain(1<<20, true)
		case 1: // a short send from memory, the rest of the batch from disk
			if _, _, err := c.SendRecent(got.Write, int64(1+rng.Intn(len(p)))); err != nil {
				t.Fatal(err)
			}
			drain(int64(1+rng.Intn(300)), false)
		case 2: // falls behind: the next batch finds it outside the memory path
		case 3: // small sends, memory first
			drain(int64(1+rng.Intn(100)), true)
		}
	}
	drain(1<<20, true)
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Fatalf("received %d bytes, want %d; first difference at %d", got.Len(), want.Len(), firstDiff(got.Bytes(), want.Bytes()))
	}
	if fromMem == 0 || fromDisk == 0 {
		t.Fatalf("both paths should have served: %d from memory, %d from disk", fromMem, fromDisk)
	}
}

// The memory path serves only the last append, only from inside it, and
// nothing once a cut happened: the cursor then reopens its files on disk.
func TestRecentServesOnlyTheLastAppend(t *testing.T) {
	s := newStore(t, t.TempDir(), testOptions(), 0)
	defer s.Close()
	l := s.Log()
	s.Append([]byte("first"))
	s.Append([]byte("second"))
	c, err := l.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	if n, ok, _ := c.SendRecent(out.Write, 100); ok || n != 0 {
		t.Fatalf("a cursor behind the last append was served from memory (%d bytes)", n)
	}
	if n, _ := c.Send(&out, 5); n != 5 {
		t.Fatalf("disk send: %d", n)
	}
	if n, ok, _ := c.SendRecent(out.Write, 100); !ok || n != 6 {
		t.Fatalf("a cursor at the last append: ok=%v n=%d", ok, n)
	}
	if n, ok, _ := c.SendRecent(out.Write, 100); ok || n != 0 {
		t.Fatalf("a cursor at the end: ok=%v n=%d", ok, n)
	}
	if out.String() != "firstsecond" {
		t.Fatalf("%q", out.String())
	}
	// A cut drops the batch, even for a cursor positioned inside it.
	s.Append([]byte("third"))
	c2, _ := l.NewCursor(12)
	defer c2.Close()
	if err := l.cut(12, true); err != nil {
		t.Fatal(err)
	}
	if n, ok, _ := c2.SendRecent(out.Write, 100); ok || n != 0 {
		t.Fatalf("served %d bytes from memory after a cut", n)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// A cursor that stays on the memory path lets go of the segment it opened
// once it is past it: otherwise retention would remove the file while the
// open descriptor kept its disk space, for as long as the replica kept up.
func TestRecentLetsGoOfPassedSegments(t *testing.T) {
	opt := testOptions() // 1000-byte segments
	opt.Log.MaxBytes = 3000
	dir := t.TempDir()
	s := newStore(t, dir, opt, 0)
	defer s.Close()
	l := s.Log()
	s.Append(pattern(400, 99))
	c, err := l.NewCursor(1) // opens the first segment
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	if n, err := c.Send(&out, 100); err != nil || n != 100 {
		t.Fatalf("disk send: %d, %v", n, err)
	}
	for i := 0; i < 20; i++ {
		s.Append(pattern(400, byte(i)))
		for {
			n, ok, err := c.SendRecent(out.Write, 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				if n, err = c.Send(&out, 1<<20); err != nil {
					t.Fatal(err)
				}
			}
			if n == 0 {
				break
			}
		}
	}
	if out.Len() != 21*400 {
		t.Fatalf("sent %d bytes, want %d", out.Len(), 21*400)
	}
	// The log closes its own retired segments in its own time; the first
	// one was only ever opened by the cursor.
	if n := openFilesNamed(t, segmentPath(dir, 1)); n != 0 {
		t.Fatalf("%d descriptors still open on the first segment, removed long ago", n)
	}
}

// A writer that appends after the log was closed (a new history or shutdown
// racing the upstream link) gets ErrClosed; a sender that was waiting on
// Changed when Close woke it must not turn that append into a panic.
func TestAppendAfterCloseWithAWaiter(t *testing.T) {
	l, err := OpenLog(t.TempDir(), 1, testOptions().Log)
	if err != nil {
		t.Fatal(err)
	}
	waiting := l.Changed()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	<-waiting
	if err := l.Append([]byte("+x\r\n")); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v, want ErrClosed", err)
	}
	l.Changed() // a sender looking again after its wakeup
	if err := l.Append([]byte("+x\r\n")); !errors.Is(err, ErrClosed) {
		t.Fatalf("second append after close: %v, want ErrClosed", err)
	}
}
