package backlog

import (
	"bytes"
	"fmt"
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Readers that follow the log the way a replica's sender does (memory when
// caught up, disk otherwise, waiting on Changed after checking End; three
// of them parked with the writer, which pushes to them and hands them back
// on a short push, as replicas on plain sockets are) while
// the writer appends from one reused buffer and fsyncs fail now and then
// (cut back to durable, then the same bytes again, as the master resends
// them): each reader gets exactly the stream, no byte skipped, repeated or
// overwritten by a later append, and never waits while End is past it.
func TestHotPathReadersUnderAppendsAndCuts(t *testing.T) {
	var fail atomic.Bool
	l := openFailingLog(t, &fail)
	rng := rand.New(rand.NewSource(7))
	stream := make([]byte, 300<<10)
	rng.Read(stream)
	total := int64(len(stream)) + 1

	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for i := 0; i < 7; i++ {
		wg.Add(1)
		go func(seed int64, park bool) {
			defer wg.Done()
			if e := readTheLog(l, stream, seed, park); e != "" {
				errs <- e
			}
		}(int64(i), i < 3)
	}

	buf := make([]byte, 4096) // reused for every append, like the link's read buffer
	for pos := int64(1); pos < total; {
		n := min(int64(1+rng.Intn(len(buf))), total-pos)
		copy(buf, stream[pos-1:pos-1+n])
		if err := l.Append(buf[:n]); err != nil {
			fail.Store(false)
			l.Resume()
			_, pos = l.Bounds()
			continue
		}
		for i := range buf[:n] {
			buf[i] = 0xAA // what the next read would leave there
		}
		pos += n
		switch rng.Intn(20) {
		case 0:
			l.SyncNow()
		case 1:
			fail.Store(true)
			l.SyncNow() // cut back to durable
		}
	}
	wg.Wait()
	if l.cuts.Load() == 0 {
		t.Error("no cut happened: the test did not exercise the hand-over after a cut")
	}
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// readTheLog reads the whole stream as a replica's sender does, sending
// from memory or disk itself and waiting on Changed at the end. With park
// it is a replica on a plain socket: parked with the writer whenever it is
// at the end, its pushes taking a random share of each append (all, some,
// none). It returns "" when it got exactly stream.
func readTheLog(l *Log, stream []byte, seed int64, park bool) string {
	rng := rand.New(rand.NewSource(seed))
	total := int64(len(stream)) + 1
	c, err := l.NewCursor(1)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	var got bytes.Buffer // written by the writer while parked, by us otherwise
	pushRng := rand.New(rand.NewSource(seed + 1))
	pushed := 0
	whole := make(chan struct{}) // the writer pushed the last byte
	f := NewFollower(func(p []byte, off int64) int {
		if off != 1+int64(got.Len()) {
			panic(fmt.Sprintf("push at %d, reader holds up to %d", off, got.Len()))
		}
		k := len(p)
		if pushRng.Intn(4) == 0 {
			k = pushRng.Intn(len(p) + 1)
		}
		got.Write(p[:k])
		pushed += k
		if got.Len() == len(stream) {
			close(whole)
		}
		return k
	})
	for c.Offset() < total {
		max := int64(1 + rng.Intn(4000))
		n, ok, err := c.SendRecent(got.Write, max)
		if !ok {
			n, err = c.Send(&got, max)
		}
		if err != nil {
			return err.Error()
		}
		if n > 0 {
			continue
		}
		if park && c.Park(f) {
			select {
			case <-f.Woken():
			case <-whole:
			case <-time.After(10 * time.Second):
				c.Unpark(f)
				if _, end := l.Bounds(); end > c.Offset() && c.Offset() < total {
					return "a parked reader was neither fed nor woken"
				}
			}
			c.Unpark(f)
			continue
		}
		changed := l.Changed()
		if _, end := l.Bounds(); end > c.Offset() {
			continue
		}
		select {
		case <-changed:
		case <-time.After(10 * time.Second):
			if _, end := l.Bounds(); end > c.Offset() {
				return "lost wakeup: end passed the reader while it waited"
			}
		}
	}
	if park && pushed == 0 {
		return "the writer never pushed to the follower"
	}
	if !bytes.Equal(got.Bytes(), stream) {
		return fmt.Sprintf("reader's bytes differ from the stream at offset %d (got %d bytes)", firstDiff(got.Bytes(), stream)+1, got.Len())
	}
	return ""
}
