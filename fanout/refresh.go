package fanout

import (
	"time"
)

// CapaRefresh is the REPLCONF capa a downstream replproxy sends with an
// rdb-only request: the offset of its PSYNC ? <offset> is then the oldest
// snapshot it can use, and the proxy renews its own snapshot from upstream
// first when the stored one is older. Redis never sends it, and reads the
// offset after "?" as nothing.
const CapaRefresh = "replproxy-refresh"

// Reasons a replica waits for a snapshot, as INFO and metrics show them.
const (
	WaitNoHistory  = "no_history"       // the proxy has not synced from upstream yet
	WaitTrimmed    = "snapshot_trimmed" // retention passed the snapshot: a refresh is due
	WaitOlder      = "snapshot_too_old" // a downstream replproxy asked for a newer one
	WaitDamaged    = "snapshot_damaged" // the stored one failed its checksum: a refresh is due
	WaitQueued     = "full_sync_queued" // behind replicas.max_concurrent_full_syncs
	waitLogEvery   = 30 * time.Second   // a waiting replica is never silent for longer
	minNeedTimeout = 30 * time.Second   // floor for how long a refresh request may wait
)

// setWait records why the replica waits, keeping the start of the wait
// across changes of reason.
func (r *replica) setWait(reason string) {
	since := time.Now()
	if w := r.wait.Load(); w != nil {
		if w.reason == reason {
			return
		}
		since = w.since
	}
	r.wait.Store(&waitState{reason: reason, since: since})
}

func (r *replica) endWait() { r.wait.Store(nil) }
