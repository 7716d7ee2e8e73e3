package fanout

import (
	"context"
	"fmt"
	"time"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/periodic"
)

// enforceLag drops replicas that Redis would drop, and those the lag
// policy names. A replica's lag lives in the segment files, so keeping it
// costs only disk; but one that stopped acknowledging (repl-timeout), or
// that holds open a segment retention removed, is dropped so that neither
// dead peers nor disk linger.
func (s *Server) enforceLag(ctx context.Context) {
	periodic.Run(ctx, time.Second, nil, func(time.Time) {
		st := s.cfg.Store.State()
		for _, r := range s.replicaList() {
			if reason := s.lagViolation(r, st); reason != "" {
				r.log.Warn().Str("reason", reason).Msg("dropping replica")
				r.drop(reason)
			}
		}
	})
}

func (s *Server) lagViolation(r *replica, st backlog.State) string {
	state := ReplicaState(r.state.Load())
	if reason := s.pinning(r, state, st); reason != "" {
		return reason
	}
	if state != StateOnline {
		return ""
	}
	if lag := st.End - r.sentOff.Load(); s.cfg.MaxLagBytes > 0 && lag > s.cfg.MaxLagBytes {
		return fmt.Sprintf("lag of %d bytes exceeds replicas.max_lag_bytes %d", lag, s.cfg.MaxLagBytes)
	}
	if r.prePsync {
		return "" // plain SYNC replicas send no ACKs to time
	}
	silent := time.Since(time.Unix(0, r.ackTime.Load()))
	if silent > s.cfg.ReplTimeout {
		return fmt.Sprintf("no ACK for %s, over replicas.timeout %s", silent.Round(time.Second), s.cfg.ReplTimeout)
	}
	if s.cfg.MaxLag > 0 && silent > s.cfg.MaxLag {
		return fmt.Sprintf("no ACK for %s, over replicas.max_lag_seconds %s", silent.Round(time.Second), s.cfg.MaxLag)
	}
	return ""
}

// pinning reports a replica whose next byte lies below the retained
// backlog for longer than replicas.timeout: its cursor keeps a removed
// segment's file open, so disk use would grow past backlog.max_bytes.
func (s *Server) pinning(r *replica, state ReplicaState, st backlog.State) string {
	if state == StateWaitBgsave || r.sentOff.Load() >= st.First {
		r.pinnedAt.Store(0)
		return ""
	}
	now := time.Now().UnixNano()
	if r.pinnedAt.CompareAndSwap(0, now) {
		return ""
	}
	held := time.Duration(now - r.pinnedAt.Load())
	if held <= s.cfg.ReplTimeout {
		return ""
	}
	return fmt.Sprintf("it has held a segment retention removed (offset %d, backlog starts at %d) for %s, over replicas.timeout %s",
		r.sentOff.Load(), st.First, held.Round(time.Second), s.cfg.ReplTimeout)
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
	select {
	case slots <- struct{}{}:
		return func() { <-slots }, nil
	default:
	}
	// Queued: said at once, in the log and in INFO.
	r.setWait(WaitQueued)
	r.log.Info().Int("max_concurrent_full_syncs", cap(slots)).Msg("full sync queued")
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case slots <- struct{}{}:
			return func() { <-slots }, nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-tick.C:
			if err := r.write([]byte("\n")); err != nil {
				return nil, err
			}
		}
	}
}
