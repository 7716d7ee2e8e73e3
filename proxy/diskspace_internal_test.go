package proxy

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/backlog"
)

// Issue 21, point 3: a session that ended on a disk error is no healthy
// session, whatever it stored: the backoff keeps growing, to
// diskBackoffMax, and a full disk waits at least one space check. A
// healthy session still resets it, as before.
func TestNextBackoffAfterDiskErrors(t *testing.T) {
	l := &Link{cfg: LinkConfig{BackoffMin: 200 * time.Millisecond, BackoffMax: 5 * time.Second}}
	full := &storeFailure{fmt.Errorf("store stream: append: %w", syscall.ENOSPC)}
	backoff := l.cfg.BackoffMin
	var waits []time.Duration
	for i := 0; i < 6; i++ {
		wait, next := l.nextBackoff(backoff, full, true)
		waits = append(waits, wait)
		backoff = next
	}
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits after sessions that stored bytes and then hit ENOSPC: %v, want %v", waits, want)
		}
	}
	rewound := &storeFailure{fmt.Errorf("store stream: %w", backlog.ErrRewound)}
	if wait, next := l.nextBackoff(time.Second, rewound, true); wait != time.Second || next != 2*time.Second {
		t.Fatalf("after a cut of the log: wait %s then %s, want 1s then 2s", wait, next)
	}
	if wait, next := l.nextBackoff(4*time.Second, errors.New("master closed the connection"), true); wait != l.cfg.BackoffMin || next != 2*l.cfg.BackoffMin {
		t.Fatalf("after a healthy session: wait %s then %s, want the minimum", wait, next)
	}
	if wait, next := l.nextBackoff(4*time.Second, errors.New("connect: refused"), false); wait != 4*time.Second || next != l.cfg.BackoffMax {
		t.Fatalf("after a failed connect: wait %s then %s", wait, next)
	}
}
