package fanout

import (
	"strings"
	"testing"
)

// Far-side cluster clients read the slot map with a monitor user, which
// cannot repoint the proxy; replicas cannot read it, and no limited role
// reaches another CLUSTER subcommand.
func TestRoleCommands(t *testing.T) {
	cmd := func(words ...string) [][]byte {
		out := make([][]byte, len(words))
		for i, w := range words {
			out[i] = []byte(w)
		}
		return out
	}
	mon := &User{Name: "mon", Role: RoleMonitor}
	repl := &User{Name: "repl", Role: RoleReplica}
	for _, c := range []struct {
		u       *User
		args    [][]byte
		allowed bool
	}{
		{mon, cmd("CLUSTER", "SLOTS"), true},
		{mon, cmd("cluster", "Shards"), true},
		{mon, cmd("CLUSTER", "RESET"), false},
		{mon, cmd("CLUSTER"), false},
		{mon, cmd("REPLICAOF", "h", "1"), false},
		{mon, cmd("SUBSCRIBE", HelloChannel), true},
		{mon, cmd("SUBSCRIBE", "other"), false},
		{repl, cmd("CLUSTER", "SLOTS"), false},
		{repl, cmd("PSYNC", "?", "-1"), true},
		{repl, cmd("SLAVEOF", "h", "1"), false},
	} {
		got := c.u.denied(c.args)
		if (got == "") != c.allowed || (got != "" && !strings.HasPrefix(got, "NOPERM ")) {
			t.Errorf("%s %q: denied %q, want allowed %v", c.u.Role, c.args, got, c.allowed)
		}
	}
}
