package fanout

import (
	"context"
	"fmt"
	"time"
)

// enforceLag drops online replicas that fell behind the lag policy. Their
// lag lives in the segment files, so keeping them costs only disk; the
// policy is there for operators who would rather resync a far-behind
// replica than serve it old data for long.
func (s *Server) enforceLag(ctx context.Context) {
	if s.cfg.MaxLagBytes <= 0 && s.cfg.MaxLag <= 0 {
		return
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		end := s.cfg.Store.State().End
		for _, r := range s.replicaList() {
			if reason := s.lagViolation(r, end); reason != "" {
				r.drop(reason)
			}
		}
	}
}

func (s *Server) lagViolation(r *replica, end int64) string {
	if r.state.Load().(string) != StateOnline {
		return ""
	}
	if lag := end - r.sentOff.Load(); s.cfg.MaxLagBytes > 0 && lag > s.cfg.MaxLagBytes {
		return fmt.Sprintf("lag of %d bytes exceeds replicas.max_lag_bytes %d", lag, s.cfg.MaxLagBytes)
	}
	if r.prePsync || s.cfg.MaxLag <= 0 {
		return "" // plain SYNC replicas send no ACKs to time
	}
	if lag := time.Since(time.Unix(0, r.ackTime.Load())); lag > s.cfg.MaxLag {
		return fmt.Sprintf("no ACK for %s, over replicas.max_lag_seconds %s", lag.Round(time.Second), s.cfg.MaxLag)
	}
	return ""
}

func (s *Server) replicaList() []*replica {
	s.mu.Lock()
	defer s.mu.Unlock()
	rs := make([]*replica, 0, len(s.replicas))
	for _, r := range s.replicas {
		rs = append(rs, r)
	}
	return rs
}

// acquireFullSync takes one of the limited full-sync slots, sending the
// newline keepalives Redis sends to replicas waiting for a BGSAVE.
func (r *replica) acquireFullSync(ctx context.Context) (release func(), err error) {
	slots := r.srv.fullSyncSlots
	if slots == nil {
		return func() {}, nil
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	logged := false
	for {
		select {
		case slots <- struct{}{}:
			return func() { <-slots }, nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-tick.C:
			if !logged {
				r.log.Info().Int("max_concurrent_full_syncs", cap(slots)).Msg("full sync queued")
				logged = true
			}
			if err := r.write([]byte("\n")); err != nil {
				return nil, err
			}
		}
	}
}
