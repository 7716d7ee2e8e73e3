package proxy

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// Issue 27 review: config.yaml's commented examples (users, sentinel,
// cluster, tls, pipelines) are what operators uncomment; each, uncommented
// alone, still reads with its keys known and its values of the right type.
func TestConfigYAMLCommentedExamplesLoad(t *testing.T) {
	raw, err := os.ReadFile("../config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	head := regexp.MustCompile(`^(\s*)# ([a-z_]+):\s*$`)
	found := map[string]bool{}
	for i, l := range lines {
		m := head.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		indent, key := m[1], m[2]
		var out []string
		for j, o := range lines {
			if j < i && strings.HasPrefix(o, indent+key+":") && !strings.HasPrefix(o, indent+" ") {
				continue // the uncommented default it replaces (users: [])
			}
			out = append(out, o)
		}
		off := len(out) - len(lines) // lines dropped before i
		out[i+off] = indent + key + ":"
		n := 0
		for j := i + off + 1; j < len(out) && strings.HasPrefix(out[j], indent+"#   "); j++ {
			out[j] = indent + out[j][len(indent)+2:]
			n++
		}
		if n == 0 {
			continue // a sentence, not an example
		}
		found[key] = true
		path := writeConfig(t, strings.Join(out, "\n"))
		if _, err := LoadConfig(path); err != nil {
			t.Errorf("config.yaml with the %s example uncommented: %v", key, err)
		}
	}
	for _, key := range []string{"users", "sentinel", "cluster", "tls", "pipelines"} {
		if !found[key] {
			t.Errorf("no commented %s example found in config.yaml", key)
		}
	}
}
