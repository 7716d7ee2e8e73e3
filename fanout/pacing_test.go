package fanout

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/rdbmeta"
)

// The backoff after failed full syncs: 1 s doubling to 60 s, untouched by
// sessions the proxy ended itself, and forgotten once the replica loads a
// snapshot (ACKs its offset).
func TestPacingBackoff(t *testing.T) {
	s := newTestServer(Config{Logger: zerolog.Nop()})
	r := &replica{srv: s, ip: "10.0.0.1", port: 6380, log: zerolog.Nop()}
	attempt := func(cause error) time.Duration {
		a := &fullSyncAttempt{r: r, snap: backlog.SnapshotInfo{Offset: 100}, done: make(chan struct{})}
		a.ended(cause)
		pp := s.pacer.peers[r.pacingKey()]
		if pp == nil {
			return 0
		}
		return pp.delay
	}
	gone := errors.Join(errReplicaGone, errors.New("EOF"))
	for _, want := range []time.Duration{1, 2, 4, 8, 16, 32, 60, 60} {
		if got := attempt(gone); got != want*time.Second {
			t.Fatalf("delay %s, want %s", got, want*time.Second)
		}
	}
	if got := attempt(context.Canceled); got != 60*time.Second {
		t.Fatalf("a proxy shutdown changed the delay to %s", got)
	}
	r.ackOff.Store(100)
	if got := attempt(gone); got != 0 {
		t.Fatalf("delay %s after the replica loaded the snapshot, want none", got)
	}
	if !s.pacer.peers[r.pacingKey()].notBefore.IsZero() {
		t.Fatal("a replica that loaded the snapshot still waits")
	}
}

func TestOlderThanProducer(t *testing.T) {
	redis74 := rdbmeta.Info{Magic: "REDIS", Version: 12, RedisVer: "7.4.1"}
	redis72 := rdbmeta.Info{Magic: "REDIS", Version: 11, RedisVer: "7.2.6"}
	valkey81 := rdbmeta.Info{Magic: "REDIS", Version: 11, ValkeyVer: "8.1.0"}
	valkey9 := rdbmeta.Info{Magic: "VALKEY", Version: 80, ValkeyVer: "9.0.0"}
	cases := []struct {
		replica string
		meta    rdbmeta.Info
		warn    bool
	}{
		{"", redis74, false},      // Redis replicas announce nothing
		{"8.0.1", redis72, false}, // Valkey 8 loads RDB 11
		{"8.0.1", redis74, true},  // but not RDB 12
		{"8.0.1", valkey81, true}, // older than the producer
		{"8.0.1", valkey9, true},
		{"9.0.0", valkey9, false},
		{"8.0", redis74, false}, // not a version: no claim
	}
	for _, c := range cases {
		if got := olderThanProducer(c.replica, c.meta) != ""; got != c.warn {
			t.Errorf("replica %q, snapshot %s from %s: warn %v, want %v", c.replica, c.meta.Header(), c.meta.Producer(), got, c.warn)
		}
	}
}

// Issue 21, point 6: the diagnosis of a failed full sync rests on the
// replica's own evidence and says how sure it is: its announced version
// (certain), failures in a row (likely), else none.
func TestDiagnosisNeedsEvidence(t *testing.T) {
	redis74 := rdbmeta.Info{Magic: "REDIS", Version: 12, RedisVer: "7.4.1"}
	cases := []struct {
		version   string
		failures  int
		certainty string
	}{
		{"", 1, certaintyNone},
		{"", 2, certaintyNone},
		{"", 3, certaintyRepeated},
		{"8.0.1", 1, certaintyVersion},
		{"9.0.0", 1, certaintyNone},
	}
	for _, c := range cases {
		a := &fullSyncAttempt{r: &replica{version: c.version}, meta: redis74}
		why, certainty := a.diagnose(c.failures)
		if certainty != c.certainty {
			t.Errorf("version %q, %d failures: %q (%s), want certainty %s", c.version, c.failures, why, certainty, c.certainty)
		}
		if older := strings.Contains(why, "older than") || strings.Contains(why, "cannot load"); older != (certainty != certaintyNone) {
			t.Errorf("version %q, %d failures: %q claims more than its evidence", c.version, c.failures, why)
		}
	}
}
