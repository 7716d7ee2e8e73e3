package redisproc

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

const pollInterval = 50 * time.Millisecond

// Eventually polls cond every 50 ms until it returns true; after timeout it
// fails the test with what and the message from the last poll.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, msg := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redisproc: timed out after %s waiting for %s: %s", timeout, what, msg)
		}
		time.Sleep(pollInterval)
	}
}

// WaitInSync waits until every replica is connected (master_link_status:up),
// has applied exactly the master's replication stream (slave_repl_offset ==
// master_repl_offset) and holds the same data (equal DEBUG DIGEST).
//
// Offsets come from the master and from each replica only, never from the
// replica's upstream, so the replicas may hang off something that is not
// Redis, such as the proxy, as long as it preserves offsets.
func WaitInSync(t testing.TB, timeout time.Duration, master *Server, replicas ...*Server) {
	t.Helper()
	what := fmt.Sprintf("%d replica(s) in sync with master %s", len(replicas), master.Addr())
	Eventually(t, timeout, what, func() (bool, string) {
		return inSync(master, replicas)
	})
}

// inSync reads the master's offset before and after the digests: if it
// moved (a write, an expiry, a replication PING), the snapshot is not
// consistent and the caller polls again.
func inSync(master *Server, replicas []*Server) (bool, string) {
	before := master.InfoInt("replication", "master_repl_offset")
	want := master.Digest()
	ok := before >= 0 && want != ""

	var report strings.Builder
	fmt.Fprintf(&report, "\n  master  %s offset=%d digest=%s", master.Addr(), before, want)
	for _, r := range replicas {
		info := r.Info("replication")
		off, digest := info["slave_repl_offset"], r.Digest()
		fmt.Fprintf(&report, "\n  replica %s offset=%s digest=%s link=%s",
			r.Addr(), orMissing(off), digest, orMissing(info["master_link_status"]))
		// A replica that has not reconnected yet can match the master
		// by offset and digest (it loaded both from its RDB), so the link
		// must be up as well.
		if off != fmt.Sprint(before) || digest != want || info["master_link_status"] != "up" {
			ok = false
		}
	}
	if after := master.InfoInt("replication", "master_repl_offset"); after != before {
		fmt.Fprintf(&report, "\n  (master offset moved to %d while reading)", after)
		ok = false
	}
	return ok, report.String()
}

func orMissing(s string) string {
	if s == "" {
		return "?"
	}
	return s
}
