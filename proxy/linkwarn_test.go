package proxy_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// failureWarnings are the log's "connection to the master failed" lines,
// each as its failures_since_last_success, and whether each was a warning.
func failureWarnings(t *testing.T, path string) (counts []int, allWarn bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	allWarn = true
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var line struct {
			Level    string `json:"level"`
			Message  string `json:"message"`
			Failures int    `json:"failures_since_last_success"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Message != "connection to the master failed" {
			continue
		}
		counts = append(counts, line.Failures)
		allWarn = allWarn && line.Level == "warn"
	}
	return counts, allWarn
}

// Issue 22, point 6: every failed attempt to reach the master is a
// warning with the number of failures since the last success, which
// starts again from 1 after the link has streamed.
func TestFailedConnectionsWarnWithACount(t *testing.T) {
	m := redisproc.Start(t)
	p := startProxy(t, proxyConfig(t, "127.0.0.1:"+strconv.Itoa(redisproc.FreePort(t))))
	redisproc.Eventually(t, 20*time.Second, "three failed attempts logged", func() (bool, string) {
		counts, _ := failureWarnings(t, p.logPath)
		return len(counts) >= 3, fmt.Sprint(counts)
	})
	counts, allWarn := failureWarnings(t, p.logPath)
	if !allWarn || counts[0] != 1 || counts[1] != 2 || counts[2] != 3 {
		t.Fatalf("failed attempts logged as %v (all at warn: %v), want 1, 2, 3 at warn", counts, allWarn)
	}

	w, err := dialWire(p.cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, err := w.do("REPLICAOF", "127.0.0.1", strconv.Itoa(m.Port)); err != nil || got != "+OK" {
		t.Fatalf("REPLICAOF: %q %v", got, err)
	}
	waitLinkUp(t, p)
	before, _ := failureWarnings(t, p.logPath)
	m.Kill()
	redisproc.Eventually(t, 20*time.Second, "a failed attempt after the master died", func() (bool, string) {
		counts, _ := failureWarnings(t, p.logPath)
		return len(counts) > len(before), fmt.Sprint(counts)
	})
	counts, _ = failureWarnings(t, p.logPath)
	if got := counts[len(before)]; got != 1 {
		t.Fatalf("first failure after a success counted %d, want 1 (all: %v)", got, counts)
	}
}
