package upstream

import (
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
)

// A demand for a snapshot lasts only while replicas renew it. One left by
// a replica that went away (or from before the link followed a master with
// other offsets) used to stay as a floor for ever: every later waiting
// replica then had the Refresher ask for that offset, which an upstream
// replproxy refuses, so the chain could never refresh again.
func TestStaleSnapshotDemandIsForgotten(t *testing.T) {
	store := newHistoryStore(t)
	if err := store.Append([]byte(strings.Repeat("x", 500))); err != nil {
		t.Fatal(err)
	}
	r := NewRefresher(NewLink(Config{Addr: "127.0.0.1:1"}, store, nil, zerolog.Nop()), RefreshConfig{})
	r.Need(1 << 40)
	r.wantAt.Store(time.Now().Add(-2 * demandFresh).UnixNano()) // its replica left
	r.Need(1400)
	if got := r.needOffset(); got != 1400 {
		t.Fatalf("refresh asks for a snapshot at %d, want 1400: a demand nobody renews still counts", got)
	}
}

// newHistoryStore opens a store in a temp dir with a history to append to,
// as after a first full sync.
func newHistoryStore(t *testing.T) *backlog.Store {
	t.Helper()
	store, err := backlog.Open(t.TempDir(), backlog.Options{
		Log:    backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: backlog.FsyncNo},
		Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	w, err := store.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("REDIS0010fake"))
	if err := store.Reset(backlog.RandomReplID(), 1000, w); err != nil {
		t.Fatal(err)
	}
	return store
}
