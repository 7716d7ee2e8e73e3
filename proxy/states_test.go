package proxy_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 27, point 3: every state change of a replica is logged with its
// reason, as the upstream link's are: a full sync (wait_bgsave, send_bulk,
// online), then, once its link is killed, a partial resync (wait_bgsave,
// online). States are logged by name.
func TestReplicaStateTransitionsLogged(t *testing.T) {
	t.Parallel()
	r := startRelay(t, 1)
	if _, err := r.master.Do("SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	r.waitInSync(t)
	if _, err := r.replicas[0].Do("CLIENT", "KILL", "TYPE", "master"); err != nil {
		t.Fatal(err)
	}
	want := []string{"wait_bgsave>send_bulk", "send_bulk>online", "wait_bgsave>online"}
	var got []string
	redisproc.Eventually(t, syncTimeout, "replica state changes in the proxy log", func() (bool, string) {
		got = transitions(t, r.proxy.logPath, "replica state")
		return len(got) >= len(want), strings.Join(got, " ")
	})
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("replica state changes %q, want %q", got, want)
	}
	if link := transitions(t, r.proxy.logPath, "upstream link state"); !strings.Contains(strings.Join(link, " "), ">connected") {
		t.Fatalf("upstream link state changes %q: none to connected", link)
	}
}

// transitions lists the from>to of a state's log lines, and fails the
// test on a line that gives no reason.
func transitions(t *testing.T, logPath, message string) []string {
	t.Helper()
	var out []string
	for _, line := range logLines(t, logPath) {
		if line["message"] != message {
			continue
		}
		if reason, _ := line["reason"].(string); reason == "" {
			t.Fatalf("%s logged without a reason: %v", message, line)
		}
		out = append(out, fmt.Sprintf("%v>%v", line["from"], line["to"]))
	}
	return out
}
