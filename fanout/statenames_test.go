package fanout

import (
	"slices"
	"testing"
)

// Issue 27 review, point 3: the typed states print the names the string
// constants had before (4d84c69), which are Redis's: ROLE's link states
// and INFO replication's slaveN state=, that Sentinel, redis_exporter and
// the replproxy_*_state metric labels rely on.
func TestStateNamesUnchanged(t *testing.T) {
	var links, replicas []string
	for s := range LinkStates {
		links = append(links, s.String())
	}
	for s := range ReplicaStates {
		replicas = append(replicas, s.String())
	}
	if want := []string{"connect", "connecting", "handshake", "sync", "connected"}; !slices.Equal(links, want) {
		t.Errorf("link states %q, want %q", links, want)
	}
	if want := []string{"wait_bgsave", "send_bulk", "online"}; !slices.Equal(replicas, want) {
		t.Errorf("replica states %q, want %q", replicas, want)
	}
	if LinkConnected.String() != "connected" || LinkSync.String() != "sync" || StateOnline.String() != "online" {
		t.Error("the states INFO maps to master_link_status and master_sync_in_progress are misnamed")
	}
}
