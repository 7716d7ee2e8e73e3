package proxy

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/redisproc"
)

// eventedLink is a link to a real master, not running, and a watcher
// that events are handed to as the sentinels at s1, s2 would send them.
func eventedLink(t *testing.T) (*Link, *sentinelWatch, string) {
	t.Helper()
	m := redisproc.Start(t)
	store, err := backlog.Open(t.TempDir(), backlog.Options{
		Log:    backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: backlog.FsyncNo},
		Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	l := NewLink(LinkConfig{Addr: m.Addr(), ListenPort: 1, ReplTimeout: time.Minute, ConnectTimeout: 2 * time.Second,
		BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second, AckMode: AckStored}, store, nil, zerolog.Nop())
	w := &sentinelWatch{cfg: SentinelConfig{Name: "mymaster", FailoverPause: Duration(time.Hour), Poll: Duration(time.Hour)},
		link: l, log: zerolog.Nop()}
	host, port, _ := net.SplitHostPort(m.Addr())
	return l, w, "mymaster " + host + " " + port
}

// Only the sentinel leading a failover publishes its steps, but every
// sentinel that tried to get elected for it and lost publishes
// -failover-abort-not-elected when its election times out (up to 10 s
// later, while the leader may still wait for the promotion). That abort
// is about its own attempt, not the leader's failover: it must neither
// unpark the link (it would read the old master past the fork point)
// nor let polls act again.
func TestAbortFromAnotherSentinelKeepsThePark(t *testing.T) {
	l, w, master := eventedLink(t)
	w.event("+selected-slave", "slave 127.0.0.1:1 127.0.0.1 1 @ "+master, "s1:26379")
	if !l.parked() {
		t.Fatal("+selected-slave of the followed master did not park the link")
	}
	w.event("-failover-abort-not-elected", "master "+master, "s2:26379")
	if !l.parked() {
		t.Fatal("an abort from a sentinel that did not lead the failover unparked the link")
	}
	if w.pollMayRepoint(w.generation()) {
		t.Fatal("an abort from a sentinel that did not lead the failover let polls act again")
	}
	w.event("-failover-abort-slave-timeout", "master "+master, "s1:26379")
	if l.parked() {
		t.Fatal("the leader's abort did not unpark the link")
	}
	if !w.pollMayRepoint(w.generation()) {
		t.Fatal("polls stay ignored after the leader's abort")
	}
}

// A REPLICAOF to another master while parked is obeyed at once: the park
// keeps the link off the old master only, and the operator was told OK.
func TestReplicaofWhileParkedMovesTheLink(t *testing.T) {
	l, w, master := eventedLink(t)
	other := redisproc.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	go func() { defer close(done); l.Run(ctx) }()
	w.event("+selected-slave", "slave 127.0.0.1:1 127.0.0.1 1 @ "+master, "s1:26379")
	if !l.parked() {
		t.Fatal("+selected-slave of the followed master did not park the link")
	}
	if !l.Repoint(other.Addr(), "REPLICAOF from an operator") {
		t.Fatal("the repoint changed nothing")
	}
	redisproc.Eventually(t, 30*time.Second, "the link to follow the operator's master", func() (bool, string) {
		st := l.LinkStatus().State
		return st == LinkConnected && other.Info("replication")["connected_slaves"] == "1", st
	})
}

// A +switch-master about another master than the one the link is parked
// from is a stale sentinel's news of an earlier failover (one that learns
// of it late, by hello, publishes it when it does): it must not end the
// park of the failover under way, nor let polls act again.
func TestStaleSwitchMasterKeepsThePark(t *testing.T) {
	l, w, master := eventedLink(t)
	w.event("+selected-slave", "slave 127.0.0.1:1 127.0.0.1 1 @ "+master, "s1:26379")
	if !l.parked() {
		t.Fatal("+selected-slave of the followed master did not park the link")
	}
	host, port, _ := net.SplitHostPort(l.Addr())
	w.event("+switch-master", "mymaster 127.0.0.1 2 "+host+" "+port, "s3:26379")
	if !l.parked() {
		t.Fatal("a +switch-master from another master to the parked one ended the park")
	}
	if w.pollMayRepoint(w.generation()) {
		t.Fatal("a stale +switch-master let polls act again")
	}
	w.event("+switch-master", "mymaster "+host+" "+port+" 127.0.0.1 1", "s2:26379")
	if l.parked() || l.Addr() != "127.0.0.1:1" {
		t.Fatalf("the failover's +switch-master did not move the link: parked %v, at %s", l.parked(), l.Addr())
	}
}

// A +promoted-slave of a failover of another master than the one the link
// is parked on (an earlier failover's, delivered late) neither moves the
// link nor ends the park of the failover under way.
func TestLatePromotionOfAnotherMasterKeepsThePark(t *testing.T) {
	l, w, master := eventedLink(t)
	at := l.Addr()
	w.event("+selected-slave", "slave 127.0.0.1:1 127.0.0.1 1 @ "+master, "s1:26379")
	if !l.parked() {
		t.Fatal("+selected-slave of the followed master did not park the link")
	}
	host, port, _ := net.SplitHostPort(at)
	w.event("+promoted-slave", "slave "+at+" "+host+" "+port+" @ mymaster 127.0.0.1 2", "s2:26379")
	if !l.parked() || l.Addr() != at {
		t.Fatalf("a promotion of a replica of another master moved the parked link: parked %v, at %s", l.parked(), l.Addr())
	}
	w.event("+promoted-slave", "slave 127.0.0.1:1 127.0.0.1 1 @ "+master, "s1:26379")
	if l.parked() || l.Addr() != "127.0.0.1:1" {
		t.Fatalf("the failover's promotion did not move the link: parked %v, at %s", l.parked(), l.Addr())
	}
}
