package fanout

import (
	"sync"
	"testing"
	"time"
)

// The writer's push may hand bytes to the sender, which takes them from
// the buffer at once, compresses, flushes, and the replica acknowledges
// them: maxAck must cover them before they are in the buffer, or an
// honest ACK is taken for a lie and the replica dropped. Here a sender
// spins on take while the writer pushes byte by byte, and checks maxAck
// against every byte it takes.
func TestCompressedPushRaisesMaxAckBeforeTheBytesCanGo(t *testing.T) {
	r := &replica{}
	pb := &pushBuffer{wake: make(chan struct{}, 1)}
	const pushes = 200_000
	var wg sync.WaitGroup
	wg.Add(1)
	var low int64
	go func() {
		defer wg.Done()
		taken := int64(0) // offsets 1..taken are out of the buffer
		deadline := time.Now().Add(time.Minute)
		for taken < pushes && time.Now().Before(deadline) {
			p := pb.take(false)
			if p == nil {
				continue
			}
			taken += int64(len(p))
			if got := r.maxAck.Load(); got < taken && low == 0 {
				low = taken - got
			}
			pb.giveBack(p)
		}
	}()
	one := []byte{'x'}
	for off := int64(1); off <= pushes; off++ {
		for r.pushCompressed(pb, one, off) == 0 {
			// the buffer is full: wait for the sender
		}
	}
	wg.Wait()
	if low != 0 {
		t.Fatalf("the sender took bytes %d past maxAck: an honest ACK for them would drop the replica", low)
	}
}
