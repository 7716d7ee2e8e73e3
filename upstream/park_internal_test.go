package upstream

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/internal/redisproc"
)

// Park ends the session and keeps the link off the master until Unpark or
// the bound; the next session continues partially from what is stored,
// with the writes made meanwhile. A session that starts after a park it
// could not yet be ended by ends by itself.
func TestParkKeepsTheLinkOffTheMaster(t *testing.T) {
	m := redisproc.Start(t, "--repl-backlog-size", "16mb")
	store, err := backlog.Open(t.TempDir(), backlog.Options{
		Log:    backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: backlog.FsyncNo},
		Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	l := NewLink(Config{Addr: m.Addr(), ListenPort: 1, ReplTimeout: time.Minute, ConnectTimeout: 2 * time.Second,
		BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second, AckMode: AckStored}, store, nil, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })

	l.Park(time.Now().Add(time.Hour), "test")
	if err := l.session(ctx); !errors.Is(err, errParked) {
		t.Fatalf("a session of a parked link: %v", err)
	}
	go func() { defer close(done); l.Run(ctx) }()
	time.Sleep(300 * time.Millisecond)
	expectReplicas := func(what string, n string) {
		t.Helper()
		redisproc.Eventually(t, 30*time.Second, what, func() (bool, string) {
			got := m.Info("replication")["connected_slaves"]
			return got == n && (n == "0" || l.LinkStatus().State == fanout.LinkConnected), got + " " + l.LinkStatus().State.String()
		})
	}
	expectReplicas("the parked link to stay off the master", "0")
	caughtUp := func() {
		t.Helper()
		redisproc.Eventually(t, 30*time.Second, "the link to store all the master sent", func() (bool, string) {
			want := m.InfoInt("replication", "master_repl_offset")
			got := store.State().MasterReplOffset()
			return got == want, "stored up to " + itoa(got) + ", master at " + itoa(want)
		})
	}

	l.Unpark("test")
	expectReplicas("the link to connect", "1")
	if _, err := m.Do("SET", "a", "1"); err != nil {
		t.Fatal(err)
	}
	caughtUp()

	l.Park(time.Now().Add(time.Hour), "test")
	expectReplicas("the session to end", "0")
	if _, err := m.Do("SET", "b", "2"); err != nil { // while nothing is read
		t.Fatal(err)
	}
	l.Unpark("test")
	expectReplicas("the link to come back", "1")
	caughtUp()

	l.Park(time.Now().Add(200*time.Millisecond), "test")
	redisproc.Eventually(t, 30*time.Second, "the link to come back at the bound, unasked", func() (bool, string) {
		return l.PartialSyncs.Load() == 2 && l.LinkStatus().State == fanout.LinkConnected, l.LinkStatus().State.String()
	})
	caughtUp()
	if l.FullSyncs.Load() != 1 || l.PartialSyncs.Load() != 2 || l.Failover.pauses.Load() != 3 {
		t.Fatalf("full syncs %d, partial %d, pauses %d", l.FullSyncs.Load(), l.PartialSyncs.Load(), l.Failover.pauses.Load())
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// gateLog blocks the log line containing match until release is closed,
// and closes reached when it gets there.
type gateLog struct {
	match            string
	reached, release chan struct{}
	once             sync.Once
}

func (g *gateLog) Write(p []byte) (int, error) {
	if strings.Contains(string(p), g.match) {
		g.once.Do(func() { close(g.reached) })
		<-g.release
	}
	return len(p), nil
}

// The bound of one park ends that park only: when the promotion ended it
// and the next failover parked the link again as the bound came, the new
// park stays.
func TestPauseBoundEndsOnlyItsOwnPark(t *testing.T) {
	l := NewLink(Config{Addr: "127.0.0.1:1"}, newHistoryStore(t), nil, zerolog.Nop())
	g := &gateLog{match: "failover pause ended", reached: make(chan struct{}), release: make(chan struct{})}
	l.log = zerolog.New(g)
	l.Park(time.Now().Add(-time.Millisecond), "first failover") // its bound is already past
	done := make(chan struct{})
	go func() { defer close(done); l.waitUnparked(context.Background()) }()
	<-g.reached // the bound fired; the promotion and the next park come now
	l.Unpark("promoted")
	l.Park(time.Now().Add(time.Hour), "second failover")
	close(g.release)
	<-done
	if !l.parked() {
		t.Fatal("the first park's bound ended the second park")
	}
}
