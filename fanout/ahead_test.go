package fanout

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
)

// A replica ahead of the proxy is judged by the end it saw; bytes appended
// between that look and its wait (nobody was watching, so no channel is
// closed for them) must end the wait at once, not at the next append or
// keepalive tick.
func TestWaitAheadSeesAnAppendBeforeItsWait(t *testing.T) {
	lg, err := backlog.OpenLog(t.TempDir(), 1, backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30,
		Fsync: backlog.FsyncNo, Logger: zerolog.Nop()})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	_, seen := lg.Bounds()
	if err := lg.Append([]byte("+x\r\n")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r := &replica{}
	if err := r.waitAhead(ctx, lg, seen, nil); err != nil {
		t.Fatalf("wait after an unseen append: %v, want an immediate return", err)
	}
}
