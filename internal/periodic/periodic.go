// Package periodic runs a goroutine's recurring work, owned by a context.
package periodic

import (
	"context"
	"time"
)

// Run calls f every interval, and at once whenever wake fires (nil: never),
// until ctx ends.
func Run(ctx context.Context, interval time.Duration, wake <-chan struct{}, f func(now time.Time)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-t.C:
		case <-wake:
			now = time.Now()
		}
		f(now)
	}
}
