package fanout

import (
	"sort"
	"time"
)

// AckFresh is how recently a replica must have acknowledged to count toward
// the proxy's own ACK upstream: replicas ACK every second, so a replica
// silent for longer is stopped or cut off, and must not be vouched for.
const AckFresh = 3 * time.Second

// AckQuorum returns the highest offset that at least n online replicas with
// fresh ACKs have all acknowledged: the n-th highest ACK offset. n <= 0 asks
// for all of them (the lowest). ok is false when too few replicas qualify.
func (s *Server) AckQuorum(n int) (offset int64, ok bool) {
	now := time.Now()
	var acks []int64
	for _, r := range s.Replicas() {
		// An ACK beyond what was sent is a lie (a replica-role user can
		// send any number): count no more than the replica received.
		ack := min(r.AckOffset, r.SentOff-1)
		if r.State == StateOnline && now.Sub(r.AckTime) <= AckFresh && ack > 0 {
			acks = append(acks, ack)
		}
	}
	if n <= 0 {
		n = len(acks)
	}
	if n == 0 || len(acks) < n {
		return 0, false
	}
	sort.Slice(acks, func(i, j int) bool { return acks[i] > acks[j] })
	return acks[n-1], true
}

// AckChanged returns a channel closed at the next ACK from any replica.
func (s *Server) AckChanged() <-chan struct{} {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	return s.ackChanged
}

func (s *Server) notifyAck() {
	s.ackMu.Lock()
	close(s.ackChanged)
	s.ackChanged = make(chan struct{})
	s.ackMu.Unlock()
}
