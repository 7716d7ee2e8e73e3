package fanout

import (
	"errors"
	"sync"
	"time"
)

// errEvicted ends the read of a client closed to keep the unauthenticated
// clients' buffers within their budget.
var errEvicted = errors.New("client evicted: the buffers of unauthenticated clients are over their budget")

// unauthBudget bounds the query buffers of all unauthenticated clients
// together, as Redis 7's maxmemory-clients bounds all clients: each one is
// already bounded, but a thousand of them withholding their last byte
// would hold a thousand full buffers. Past the budget, the largest are
// closed first, so the small ones (an AUTH is a few dozen bytes) are the
// last to go.
type unauthBudget struct {
	mu    sync.Mutex
	limit int64
	total int64
	held  map[*client]int64
	log   failureLog // evictions are logged at most once a second
}

func newUnauthBudget(limit int64) *unauthBudget {
	return &unauthBudget{limit: limit, held: map[*client]int64{}}
}

// charge records that c's buffer is about to have capacity n, then closes
// the largest clients until the total fits. It returns errEvicted when c
// itself is one of them, or was closed before.
func (s *Server) chargeUnauth(c *client, n int) error {
	b := s.unauth
	var victims []*client
	b.mu.Lock()
	old, ok := b.held[c]
	if !ok && c.evicted {
		b.mu.Unlock()
		return errEvicted
	}
	b.total += int64(n) - old
	b.held[c] = int64(n)
	self := false
	for b.total > b.limit && len(b.held) > 0 {
		v := b.largest()
		b.total -= b.held[v]
		delete(b.held, v)
		v.evicted = true
		if v == c {
			self = true
			break
		}
		victims = append(victims, v)
	}
	b.mu.Unlock()
	for _, v := range victims {
		v.conn.Close()
	}
	if evicted := len(victims) + boolInt(self); evicted > 0 {
		s.stats.EvictedClients.Add(int64(evicted))
		if k, ok := b.log.noteN(time.Now(), evicted); ok {
			s.log.Warn().Int("evicted", k).Int64("budget", b.limit).
				Msg("closed the largest unauthenticated clients: their buffers together were over maxmemory_unauthenticated_clients (logged at most once a second; evicted counts those since the last line)")
		}
	}
	if self {
		return errEvicted
	}
	return nil
}

// largest is the client holding the most; the caller holds b.mu.
func (b *unauthBudget) largest() *client {
	var v *client
	for c, n := range b.held {
		if v == nil || n > b.held[v] {
			v = c
		}
	}
	return v
}

// releaseUnauth forgets c's buffer: it authenticated, or it is gone.
func (s *Server) releaseUnauth(c *client) {
	b := s.unauth
	b.mu.Lock()
	defer b.mu.Unlock()
	b.total -= b.held[c]
	delete(b.held, c)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
