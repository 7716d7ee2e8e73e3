package fanout

import (
	"strings"
	"testing"
)

// COMMAND COUNT counts only what dispatch answers: each listed command,
// sent alone on a fresh connection, is known (it may want arguments).
func TestKnownCommandsAreDispatched(t *testing.T) {
	store, _ := storeWithHistory(t)
	for _, name := range knownCommands {
		if name == "psync" || name == "sync" {
			continue // would turn the connection into a replica
		}
		_, br := filteredClient(t, store, []string{strings.ToUpper(name)})
		if got := readLine(t, br); strings.HasPrefix(got, "-ERR unknown command") {
			t.Errorf("%s is counted by COMMAND COUNT but unknown: %q", name, got)
		}
	}
}
