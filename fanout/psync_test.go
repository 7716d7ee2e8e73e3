package fanout

import (
	"strings"
	"testing"

	"github.com/replproxy/replproxy/backlog"
)

// The master's partial-resync rules, including the proxy's one extension:
// a replica ahead of the proxy on the same history waits instead of
// full-syncing.
func TestJudgePsync(t *testing.T) {
	id, old := strings.Repeat("a", 40), strings.Repeat("b", 40)
	st := backlog.State{HasHistory: true, ReplID: id, ReplID2: old, SecondOffset: 500, First: 100, End: 1000}
	cases := []struct {
		name string
		req  psyncRequest
		want psyncVerdict
	}{
		{"current id inside backlog", psyncRequest{id, 100}, psyncContinue},
		{"current id at end: nothing missed", psyncRequest{id, 1000}, psyncContinue},
		{"id compared case-insensitively", psyncRequest{strings.ToUpper(id), 500}, psyncContinue},
		{"old id up to the second offset", psyncRequest{old, 500}, psyncContinue},
		{"below the backlog", psyncRequest{id, 99}, "offset below the backlog"},
		{"ahead on the same history", psyncRequest{id, 1001}, psyncAhead},
		{"question mark", psyncRequest{"?", -1}, "replica asked for a full sync"},
	}
	for _, c := range cases {
		if got := judgePsync(st, c.req); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	for _, req := range []psyncRequest{{strings.Repeat("c", 40), 500}, {old, 501}} {
		if got := judgePsync(st, req); !strings.HasPrefix(string(got), "replication ID mismatch") {
			t.Errorf("%s at %d: %q", req.replid, req.offset, got)
		}
	}
	if got := judgePsync(backlog.State{}, psyncRequest{id, 1}); got != "the proxy has no history yet" {
		t.Errorf("no history: %q", got)
	}
}
