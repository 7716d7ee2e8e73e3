package fanout

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
)

// openTestStore is an empty store in a temp dir, closed when tb ends.
func openTestStore(tb testing.TB) *backlog.Store {
	tb.Helper()
	store, err := backlog.Open(tb.TempDir(), backlog.Options{
		Log:    backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: backlog.FsyncNo},
		Logger: zerolog.Nop(),
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { store.Close() })
	return store
}
