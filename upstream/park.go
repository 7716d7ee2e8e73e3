package upstream

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/fanout"
)

// errParked ends a session because a planned failover of its master has
// begun: every byte read from the old master from now on could be one the
// promoted replica never gets, and would cost a full sync.
var errParked = errors.New("parked for a failover")

// parking keeps the link from reading its master for a while: set when a
// failover of the master starts, cleared when the new master is known or
// the failover is aborted, and never longer than until.
type parking struct {
	mu    sync.Mutex
	until time.Time // zero: not parked
	on    string    // the master the link was parked on
	why   string
	wake  chan struct{} // closed by Unpark
}

// Park ends the current session and keeps the link from starting another
// one until Unpark or until, whichever comes first. What is stored stays;
// the next session PSYNCs from its end, to the old master or a new one.
func (l *Link) Park(until time.Time, why string) {
	on := l.Addr()
	l.park.mu.Lock()
	already := !l.park.until.IsZero()
	if !already {
		l.park.wake = make(chan struct{})
		l.park.until, l.park.why, l.park.on = until, why, on
	}
	l.park.mu.Unlock()
	if already {
		return
	}
	l.Failover.pauses.Add(1)
	l.log.Info().Str("master", l.Addr()).Str("reason", why).Time("until", until).
		Msg("upstream link parked: no byte is read from the master until the failover ends")
	l.mu.Lock()
	end := l.endSess
	l.mu.Unlock()
	if end != nil {
		end(errParked)
	}
}

// Unpark lets the link connect again at once.
func (l *Link) Unpark(why string) { l.unpark(nil, why) }

// unpark ends the park whose wake channel is wake (nil: whichever), so a
// park's bound never ends a later park.
func (l *Link) unpark(wake chan struct{}, why string) {
	l.park.mu.Lock()
	defer l.park.mu.Unlock()
	if l.park.until.IsZero() || (wake != nil && wake != l.park.wake) {
		return
	}
	l.park.until = time.Time{}
	close(l.park.wake)
	l.log.Info().Str("master", l.Addr()).Str("reason", why).Msg("upstream link unparked")
}

// ParkedOn is the master the link is parked on; ok false: not parked.
func (l *Link) ParkedOn() (addr string, ok bool) {
	l.park.mu.Lock()
	defer l.park.mu.Unlock()
	return l.park.on, !l.park.until.IsZero()
}

func (l *Link) parked() bool {
	l.park.mu.Lock()
	defer l.park.mu.Unlock()
	return !l.park.until.IsZero()
}

// waitUnparked blocks while the link is parked.
func (l *Link) waitUnparked(ctx context.Context) {
	l.park.mu.Lock()
	until, wake, why := l.park.until, l.park.wake, l.park.why
	l.park.mu.Unlock()
	if until.IsZero() {
		return
	}
	l.setState(fanout.LinkConnect, "parked: "+why)
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-wake:
	case <-t.C:
		l.log.Warn().Str("master", l.Addr()).Str("reason", why).
			Msg("failover pause ended with no promotion and no abort seen; resuming from the master the link follows")
		l.unpark(wake, "pause bound reached")
	}
	select { // a repoint made while parked is applied by the next session
	case <-l.repoint:
	default:
	}
}

// FailoverTimes records how soon the link followed a promotion, for the
// log and INFO.
type FailoverTimes struct {
	pauses         atomic.Int64 // Park calls
	promotedAt     atomic.Int64 // unix ns of the promotion the link is to follow; 0: none
	switchAt       atomic.Int64 // unix ns of the +switch-master that ended it; 0: not yet
	continuedAt    atomic.Int64 // unix ns of the +CONTINUE with the new ID
	toContinue     atomic.Int64 // ms from promotion to +CONTINUE; -1: none yet
	afterSwitch    atomic.Int64 // ms from +switch-master to +CONTINUE (negative: before); only once both are known
	switchKnown    atomic.Bool
	followedShifts atomic.Int64 // +CONTINUE with a new ID after a promotion seen from Sentinel
}

func newFailoverTimes() *FailoverTimes {
	f := &FailoverTimes{}
	f.toContinue.Store(-1)
	return f
}

// Promoted notes when Sentinel said the new master was promoted.
func (f *FailoverTimes) Promoted(at time.Time) {
	f.promotedAt.Store(at.UnixNano())
	f.switchAt.Store(0)
	f.continuedAt.Store(0)
	f.switchKnown.Store(false)
}

// Switched notes the first +switch-master after a promotion.
func (f *FailoverTimes) Switched(at time.Time) {
	if f.promotedAt.Load() == 0 || !f.switchAt.CompareAndSwap(0, at.UnixNano()) {
		return
	}
	if c := f.continuedAt.Load(); c != 0 {
		f.afterSwitch.Store((c - at.UnixNano()) / int64(time.Millisecond))
		f.switchKnown.Store(true)
	}
}

// continued notes a +CONTINUE with a new ID, and returns the time since
// the promotion it follows (ok false when none is known).
func (f *FailoverTimes) continued(at time.Time) (since time.Duration, ok bool) {
	p := f.promotedAt.Load()
	if p == 0 || !f.continuedAt.CompareAndSwap(0, at.UnixNano()) {
		return 0, false
	}
	since = at.Sub(time.Unix(0, p))
	f.toContinue.Store(since.Milliseconds())
	f.followedShifts.Add(1)
	if s := f.switchAt.Load(); s != 0 {
		f.afterSwitch.Store((at.UnixNano() - s) / int64(time.Millisecond))
		f.switchKnown.Store(true)
	}
	return since, true
}

func (f *FailoverTimes) stats() []fanout.KV {
	after := int64(0)
	if f.switchKnown.Load() {
		after = f.afterSwitch.Load()
	}
	return []fanout.KV{
		{Key: "failover_pauses", Value: f.pauses.Load()},
		{Key: "failover_promotions_followed", Value: f.followedShifts.Load()},
		{Key: "failover_last_promotion_to_continue_ms", Value: f.toContinue.Load()},
		{Key: "failover_last_switch_master_to_continue_ms", Value: after},
	}
}
