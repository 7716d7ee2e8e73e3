package fanout

import (
	"testing"

	"github.com/replproxy/replproxy/rdbconvert"
)

// Only a replica whose server is older than the master's has its stream
// scanned, and only for what the master may send that it does not know.
func TestUnknownCommandsByTarget(t *testing.T) {
	for _, c := range []struct {
		target, masterKind, master string
		want                       []string
		not                        []string
	}{
		{"redis-7.2", "redis", "7.4.1", []string{"HPEXPIREAT", "HPERSIST", "HEXPIRE"}, []string{"HSET", "HSETEX", "DELIFEQ"}},
		{"valkey-8.0", "redis", "7.4.1", []string{"HPEXPIREAT"}, []string{"HGETDEL"}},
		{"redis-7.2", "valkey", "8.0.1", nil, []string{"HPEXPIREAT"}},
		{"redis-7.4", "redis", "7.4.1", nil, []string{"HPEXPIREAT"}},
		{"redis-7.4", "redis", "8.0.2", []string{"HSETEX", "HGETDEL"}, []string{"HPEXPIREAT"}},
		{"redis-7.4", "valkey", "9.0.0", []string{"DELIFEQ", "HSETEX"}, []string{"HPEXPIREAT", "HGETDEL"}},
	} {
		f, err := rdbconvert.ParseFormat(c.target)
		if err != nil {
			t.Fatal(err)
		}
		target, ok := formatServer(f)
		master, ok2 := parseServer(c.masterKind == "valkey", c.master)
		if !ok || !ok2 {
			t.Fatalf("%s / %s %s: not parsed", c.target, c.masterKind, c.master)
		}
		got := unknownTo(target, master, true)
		for _, cmd := range c.want {
			if !got[cmd] {
				t.Errorf("%s behind %s %s: %s not watched", c.target, c.masterKind, c.master, cmd)
			}
		}
		for _, cmd := range c.not {
			if got[cmd] {
				t.Errorf("%s behind %s %s: %s watched", c.target, c.masterKind, c.master, cmd)
			}
		}
		if c.want == nil && len(got) != 0 {
			t.Errorf("%s behind %s %s: %v watched, want nothing (no scan)", c.target, c.masterKind, c.master, got)
		}
	}
}
