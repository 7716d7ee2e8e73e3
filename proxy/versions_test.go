package proxy_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 11: what newer replicas send in the handshake. Valkey's REPLCONF
// version is accepted and shown in INFO; Redis 8.10's REPLCONF compression
// gets the unknown-option error, so the replica turns compression off; the
// dual-channel capabilities of Valkey 8 and Redis 8 are ignored, so the
// replica gets a plain +FULLRESYNC.
func TestNewerReplicaHandshake(t *testing.T) {
	t.Parallel()
	r := startRelay(t, 0)
	redisproc.Eventually(t, syncTimeout, "the proxy to hold a snapshot", func() (bool, string) {
		return r.proxy.info("backlog")["snapshot_offset"] != "", "no snapshot yet"
	})
	w, err := dialWire(r.proxy.cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	steps := []struct {
		cmd  []string
		want string
	}{
		{[]string{"REPLCONF", "listening-port", "7001"}, "+OK"},
		{[]string{"REPLCONF", "capa", "eof", "capa", "psync2", "capa", "dual-channel", "capa", "rdb-channel-repl"}, "+OK"},
		{[]string{"REPLCONF", "compression", "3"}, "-ERR Unrecognized REPLCONF option: compression"},
		{[]string{"REPLCONF", "version", "8.0"}, "-ERR Unrecognized version format: 8.0"},
		{[]string{"REPLCONF", "version", "8.0.1"}, "+OK"},
	}
	for _, s := range steps {
		if got, err := w.do(s.cmd...); err != nil || got != s.want {
			t.Fatalf("%v: got %q (%v), want %q", s.cmd, got, err, s.want)
		}
	}
	got := readFullSync(t, w, "PSYNC", "?", "-1")
	if !strings.HasPrefix(got.line, "+FULLRESYNC ") {
		t.Fatalf("PSYNC reply %q, want +FULLRESYNC", got.line)
	}
	redisproc.Eventually(t, 10*time.Second, "the replica's version in INFO", func() (bool, string) {
		slave := r.proxy.info("replication")["slave0"]
		replica := r.proxy.info("replicas")["replica0"]
		return strings.HasSuffix(slave, ",version=8.0.1") && strings.HasSuffix(replica, ",version=8.0.1"), slave + " / " + replica
	})
}

// Issue 11, point 3, on any machine: a replica that drops the connection
// right after each snapshot (as one too old to load it does) gets its next
// full syncs after 1 s, 2 s, 4 s... instead of at once, and the log says
// once what the proxy knows. The compat matrix shows the same with a real
// Redis 6.2 replica.
func TestFailedFullSyncsPaced(t *testing.T) {
	t.Parallel()
	r := startRelay(t, 0)
	redisproc.Eventually(t, syncTimeout, "the proxy to hold a snapshot", func() (bool, string) {
		return r.proxy.info("backlog")["snapshot_offset"] != "", "no snapshot yet"
	})
	const window = 10 * time.Second
	start := time.Now()
	for time.Since(start) < window {
		w, err := dialWire(r.proxy.cfg.Listen)
		if err != nil {
			t.Fatal(err)
		}
		for _, cmd := range [][]string{{"REPLCONF", "listening-port", "7002"}, {"REPLCONF", "capa", "eof", "capa", "psync2"}} {
			if got, err := w.do(cmd...); err != nil || got != "+OK" {
				t.Fatalf("%v: %q %v", cmd, got, err)
			}
		}
		readFullSync(t, w, "PSYNC", "?", "-1")
		w.Close()
	}
	// Without pacing this loop runs hundreds of full syncs; with it, they
	// start at about 0, 1, 3 and 7 s, and the one due at 15 s is still held.
	n := r.proxy.infoInt("stats", "sync_full")
	if n < 3 || n > 5 {
		t.Fatalf("%d full syncs in %s, want 3 to 5", n, window)
	}
	if paced := r.proxy.infoInt("stats", "sync_full_paced"); paced < n-1 {
		t.Fatalf("INFO stats sync_full_paced %d after %d full syncs", paced, n)
	}
	// "right after" or "during (after N of M bytes)": the replica may close
	// before the proxy has counted the snapshot's held-back last bytes.
	want := "an RDB version 10 snapshot (from Redis " +
		r.master.Info("server")["redis_version"] + ") without acknowledging it; 3 full syncs in a row ended so: likely a replica older than the master, which cannot load it"
	if got := strings.Count(tail(r.proxy.logPath, 500), want); got != 1 {
		t.Fatalf("the log explains the failed full syncs %d times, want once: %q", got, want)
	}
}

// Issue 21, point 6: a replica killed on purpose right after it loaded the
// snapshot (before its first ACK) left without acknowledging it, which one
// too old to load it does too. With nothing else to go on, the proxy must
// not tell the operator that it is older than the master.
func TestKilledReplicaIsNotCalledTooOld(t *testing.T) {
	t.Parallel()
	r := startRelay(t, 0)
	redisproc.Eventually(t, syncTimeout, "the proxy to hold a snapshot", func() (bool, string) {
		return r.proxy.info("backlog")["snapshot_offset"] != "", "no snapshot yet"
	})
	s := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(r.proxy.port))
	deadline := time.Now().Add(syncTimeout)
	for !strings.Contains(s.LogTail(50), "MASTER <-> REPLICA sync: Finished with success") {
		if time.Now().After(deadline) {
			t.Fatal("the replica never loaded the snapshot")
		}
		time.Sleep(2 * time.Millisecond)
	}
	s.Kill()
	var failed map[string]any
	redisproc.Eventually(t, syncTimeout, "the proxy to judge the full sync", func() (bool, string) {
		for _, line := range logLines(t, r.proxy.logPath) {
			if msg, _ := line["message"].(string); strings.HasPrefix(msg, "the replica dropped the connection") {
				failed = line
				return true, ""
			}
			if line["message"] == "replica detached" && line["ack_offset"] != float64(0) {
				return true, "" // the replica ACKed before the kill: nothing to judge
			}
		}
		return false, "no verdict yet"
	})
	if failed == nil {
		t.Skip("the replica acknowledged the snapshot before it was killed; nothing to diagnose this run")
	}
	msg := failed["message"].(string)
	if strings.Contains(msg, "older than the master") || failed["diagnosis_certainty"] != "none" {
		t.Fatalf("a replica killed right after loading the snapshot was diagnosed: %v", failed)
	}
	t.Logf("the proxy's verdict: %s", msg)
}
