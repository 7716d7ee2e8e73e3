package redisproc

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

const pollInterval = 50 * time.Millisecond

// Eventually polls cond every 50 ms until it returns true; after timeout it
// fails the test with what and the message from the last poll.
func Eventually(t TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	if ok, msg := poll(t, timeout, cond); !ok {
		t.Fatalf("redisproc: timed out after %s waiting for %s: %s", timeout, what, msg)
	}
}

// poll calls cond until it returns true, timeout has passed or the owner
// is interrupted, and returns the last result.
func poll(t TB, timeout time.Duration, cond func() (bool, string)) (bool, string) {
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok || time.Now().After(deadline) {
			return ok, msg
		}
		select {
		case <-interrupted(t):
			return false, "interrupted; " + msg
		case <-time.After(pollInterval):
		}
	}
}

// WaitInSync waits until every replica is connected (master_link_status:up),
// has applied exactly the master's replication stream (slave_repl_offset ==
// master_repl_offset) and holds the same data (equal DEBUG DIGEST). On
// timeout it fails the test with each server's offset and digest.
//
// Offsets come from the master and from each replica only, never from the
// replica's upstream, so the replicas may hang off something that is not
// Redis, such as the proxy, as long as it preserves offsets.
func WaitInSync(t TB, timeout time.Duration, master *Server, replicas ...*Server) {
	t.Helper()
	// Digests hash the whole dataset (tens of ms per server, far more on a
	// busy machine), so they are only worth computing once the offsets
	// agree; polling them meanwhile would steal CPU from the replicas
	// that are catching up.
	ok, _ := poll(t, timeout, func() (bool, string) {
		return offsetsMatch(master, replicas) && inSync(master, replicas).ok(), ""
	})
	if ok {
		return
	}
	t.Fatalf("redisproc: timed out after %s waiting for %d replica(s) to be in sync with master %s:%s",
		timeout, len(replicas), master.Addr(), inSync(master, replicas))
}

// WaitCaughtUp waits until every replica's link is up and it holds every
// byte the master had written when asked. It compares offsets only: a
// program measuring CPU spends none on digests, and a master that keeps
// writing (probes) does not hold it back. The replicas may be proxies.
func WaitCaughtUp(t TB, timeout time.Duration, master *Server, replicas ...*Server) {
	t.Helper()
	var st syncState
	ok, _ := poll(t, timeout, func() (bool, string) {
		st = offsets(master, replicas)
		return st.caughtUp(), ""
	})
	if !ok {
		t.Fatalf("redisproc: timed out after %s waiting for %d replica(s) to catch up with master %s:%s",
			timeout, len(replicas), master.Addr(), st)
	}
}

// offsets reads the master's offset, then each replica's offset and link.
func offsets(master *Server, replicas []*Server) syncState {
	m := master.InfoInt("replication", "master_repl_offset")
	st := syncState{master: serverState{addr: master.Addr(), offset: m}, masterMoved: m}
	for _, r := range replicas {
		info := r.Info("replication")
		st.replicas = append(st.replicas, serverState{
			addr:   r.Addr(),
			offset: parseOffset(info["slave_repl_offset"]),
			link:   info["master_link_status"],
		})
	}
	return st
}

func (st syncState) caughtUp() bool {
	for _, r := range st.replicas {
		if r.offset < st.master.offset || r.link != "up" {
			return false
		}
	}
	return st.master.offset >= 0
}

// offsetsMatch is the cheap precondition of inSync.
func offsetsMatch(master *Server, replicas []*Server) bool {
	want := master.InfoInt("replication", "master_repl_offset")
	for _, r := range replicas {
		if want < 0 || r.InfoInt("replication", "slave_repl_offset") != want {
			return false
		}
	}
	return want >= 0
}

// syncState is one reading of the master and its replicas.
type syncState struct {
	master      serverState
	replicas    []serverState
	masterMoved int64 // master offset after the reading; differs if it moved
}

type serverState struct {
	addr   string
	offset int64 // -1 when unknown
	digest string
	link   string // master_link_status, replicas only
}

// inSync reads the master's offset before and after the digests: if it
// moved (a write, an expiry, a replication PING), the snapshot is not
// consistent and the caller polls again.
func inSync(master *Server, replicas []*Server) syncState {
	st := syncState{master: serverState{
		addr:   master.Addr(),
		offset: master.InfoInt("replication", "master_repl_offset"),
		digest: master.Digest(),
	}}
	for _, r := range replicas {
		info := r.Info("replication")
		st.replicas = append(st.replicas, serverState{
			addr:   r.Addr(),
			offset: parseOffset(info["slave_repl_offset"]),
			digest: r.Digest(),
			link:   info["master_link_status"],
		})
	}
	st.masterMoved = master.InfoInt("replication", "master_repl_offset")
	return st
}

func (st syncState) ok() bool {
	m := st.master
	if m.offset < 0 || m.digest == "" || st.masterMoved != m.offset {
		return false
	}
	for _, r := range st.replicas {
		// A restarted replica that has not reconnected yet can match the
		// master by offset and digest (it loaded both from its RDB), so
		// the link must be up as well.
		if r.offset != m.offset || r.digest != m.digest || r.link != "up" {
			return false
		}
	}
	return true
}

func (st syncState) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n  master  %s offset=%d digest=%s", st.master.addr, st.master.offset, orMissing(st.master.digest))
	for _, r := range st.replicas {
		fmt.Fprintf(&b, "\n  replica %s offset=%d digest=%s link=%s", r.addr, r.offset, orMissing(r.digest), orMissing(r.link))
	}
	if st.masterMoved != st.master.offset {
		fmt.Fprintf(&b, "\n  (master offset moved to %d while reading)", st.masterMoved)
	}
	return b.String()
}

func parseOffset(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

func orMissing(s string) string {
	if s == "" {
		return "?"
	}
	return s
}
