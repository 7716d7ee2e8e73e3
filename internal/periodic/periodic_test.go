package periodic

import (
	"context"
	"testing"
	"time"
)

// Run calls f on a wake at once, without waiting for the interval, and
// returns when its context ends.
func TestRunWakesAndStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	wake := make(chan struct{})
	called := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, time.Hour, wake, func(time.Time) { called <- struct{}{} })
	}()
	wake <- struct{}{}
	<-called
	cancel()
	<-done
}
