package proxy

import (
	"context"
	"net"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/upstream"
)

// eventedLink is a link to a real master, not running, and a watcher
// that events are handed to as the sentinels at s1, s2 would send them.
func eventedLink(t *testing.T) (*upstream.Link, *sentinelWatch, string) {
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
	l := upstream.NewLink(upstream.Config{Addr: m.Addr(), ListenPort: 1, ReplTimeout: time.Minute, ConnectTimeout: 2 * time.Second,
		BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second, AckMode: upstream.AckStored}, store, nil, zerolog.Nop())
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
	if !isParked(l) {
		t.Fatal("+selected-slave of the followed master did not park the link")
	}
	w.event("-failover-abort-not-elected", "master "+master, "s2:26379")
	if !isParked(l) {
		t.Fatal("an abort from a sentinel that did not lead the failover unparked the link")
	}
	if w.pollMayRepoint(w.generation()) {
		t.Fatal("an abort from a sentinel that did not lead the failover let polls act again")
	}
	w.event("-failover-abort-slave-timeout", "master "+master, "s1:26379")
	if isParked(l) {
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
	if !isParked(l) {
		t.Fatal("+selected-slave of the followed master did not park the link")
	}
	if !l.Repoint(other.Addr(), "REPLICAOF from an operator") {
		t.Fatal("the repoint changed nothing")
	}
	redisproc.Eventually(t, 30*time.Second, "the link to follow the operator's master", func() (bool, string) {
		st := l.LinkStatus().State
		return st == fanout.LinkConnected && other.Info("replication")["connected_slaves"] == "1", st.String()
	})
}

// A +switch-master about another master than the one the link is parked
// from is a stale sentinel's news of an earlier failover (one that learns
// of it late, by hello, publishes it when it does): it must not end the
// park of the failover under way, nor let polls act again.
func TestStaleSwitchMasterKeepsThePark(t *testing.T) {
	l, w, master := eventedLink(t)
	w.event("+selected-slave", "slave 127.0.0.1:1 127.0.0.1 1 @ "+master, "s1:26379")
	if !isParked(l) {
		t.Fatal("+selected-slave of the followed master did not park the link")
	}
	host, port, _ := net.SplitHostPort(l.Addr())
	w.event("+switch-master", "mymaster 127.0.0.1 2 "+host+" "+port, "s3:26379")
	if !isParked(l) {
		t.Fatal("a +switch-master from another master to the parked one ended the park")
	}
	if w.pollMayRepoint(w.generation()) {
		t.Fatal("a stale +switch-master let polls act again")
	}
	w.event("+switch-master", "mymaster "+host+" "+port+" 127.0.0.1 1", "s2:26379")
	if isParked(l) || l.Addr() != "127.0.0.1:1" {
		t.Fatalf("the failover's +switch-master did not move the link: parked %v, at %s", isParked(l), l.Addr())
	}
}

// A +promoted-slave of a failover of another master than the one the link
// is parked on (an earlier failover's, delivered late) neither moves the
// link nor ends the park of the failover under way.
func TestLatePromotionOfAnotherMasterKeepsThePark(t *testing.T) {
	l, w, master := eventedLink(t)
	at := l.Addr()
	w.event("+selected-slave", "slave 127.0.0.1:1 127.0.0.1 1 @ "+master, "s1:26379")
	if !isParked(l) {
		t.Fatal("+selected-slave of the followed master did not park the link")
	}
	host, port, _ := net.SplitHostPort(at)
	w.event("+promoted-slave", "slave "+at+" "+host+" "+port+" @ mymaster 127.0.0.1 2", "s2:26379")
	if !isParked(l) || l.Addr() != at {
		t.Fatalf("a promotion of a replica of another master moved the parked link: parked %v, at %s", isParked(l), l.Addr())
	}
	w.event("+promoted-slave", "slave 127.0.0.1:1 127.0.0.1 1 @ "+master, "s1:26379")
	if isParked(l) || l.Addr() != "127.0.0.1:1" {
		t.Fatalf("the failover's promotion did not move the link: parked %v, at %s", isParked(l), l.Addr())
	}
}

// Three sentinels' feeds firing failover events at once, between two real
// masters, while the link runs: no race, no hang, and at the end the link
// follows the last +switch-master, unparked, and Run stops with its
// context leaving no goroutine.
func TestFailoverEventStormWhileRunning(t *testing.T) {
	l, w, _ := eventedLink(t)
	w.cfg.FailoverPause = Duration(200 * time.Millisecond)
	other := redisproc.Start(t)
	before := runtime.NumGoroutine() // the servers' waiters are counted
	ends := []string{l.Addr(), other.Addr()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); l.Run(ctx) }()
	var wg sync.WaitGroup
	for s := 0; s < 3; s++ {
		from := "s" + strconv.Itoa(s) + ":26379"
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 150; i++ {
				a, b := ends[(i+s)%2], ends[(i+s+1)%2]
				ah, ap, _ := net.SplitHostPort(a)
				bh, bp, _ := net.SplitHostPort(b)
				slave := "slave " + b + " " + bh + " " + bp + " @ mymaster " + ah + " " + ap
				switch i % 5 {
				case 0:
					w.event("+selected-slave", slave, from)
				case 1:
					w.event("+failover-state-send-slaveof-noone", slave, from)
				case 2:
					w.event("+promoted-slave", slave, from)
				case 3:
					w.event("-failover-abort-slave-timeout", "master mymaster "+ah+" "+ap, from)
				case 4:
					w.event("+switch-master", "mymaster "+ah+" "+ap+" "+bh+" "+bp, from)
				}
				time.Sleep(time.Duration(i%3) * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	oh, op, _ := net.SplitHostPort(other.Addr())
	l.Unpark("storm over")
	cur, _, _ := net.SplitHostPort(l.Addr())
	_, curPort, _ := net.SplitHostPort(l.Addr())
	w.event("+switch-master", "mymaster "+cur+" "+curPort+" "+oh+" "+op, "s0:26379")
	redisproc.Eventually(t, 30*time.Second, "the link to follow the last switch", func() (bool, string) {
		return l.Addr() == other.Addr() && !isParked(l) && l.LinkStatus().State == fanout.LinkConnected &&
			other.Info("replication")["connected_slaves"] == "1", l.Addr() + " " + l.LinkStatus().State.String()
	})
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not stop with its context")
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after Run stopped, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

func isParked(l *upstream.Link) bool {
	_, ok := l.ParkedOn()
	return ok
}
