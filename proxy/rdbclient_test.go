package proxy_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 22, point 10: redis-cli --rdb against the proxy gets the stored
// snapshot, and the proxy logs its offset and age; before the proxy has a
// snapshot, redis-cli --rdb and a plain SYNC get an error line at once
// rather than waiting in silence.
func TestRDBClientsAreToldWhatTheyGet(t *testing.T) {
	// No snapshot yet: the master is not there.
	cfg := proxyConfig(t, "127.0.0.1:"+strconv.Itoa(redisproc.FreePort(t)))
	tp := startProxy(t, cfg)
	out, err := redisCLIRDB(t, tp, filepath.Join(t.TempDir(), "none.rdb"))
	if err == nil || !strings.Contains(out, "ERR replproxy has no snapshot to serve yet (no_history): its first full sync from the master has not completed") {
		t.Fatalf("redis-cli --rdb before any snapshot: %v\n%s", err, out)
	}
	c, err := tp.dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	c.Write([]byte("SYNC\r\n"))
	line, err := readNonEmptyLine(bufio.NewReader(c))
	if err != nil || !strings.HasPrefix(line, "-ERR replproxy has no snapshot to serve yet (no_history)") {
		t.Fatalf("SYNC before any snapshot: %q %v", line, err)
	}
	tp.stop()

	// A snapshot, then more writes: it is older than the stream.
	m := redisproc.Start(t, masterArgs...)
	m.Do("SET", "before", "1")
	cfg = proxyConfig(t, m.Addr())
	tp = startProxy(t, cfg)
	waitProxyAt(t, m, tp)
	snapOffset := tp.infoInt("backlog", "snapshot_offset")
	m.Do("SET", "after", "2")
	waitProxyAt(t, m, tp)
	behind := m.InfoInt("replication", "master_repl_offset") - snapOffset
	time.Sleep(1100 * time.Millisecond) // an age of a second or more
	path := filepath.Join(t.TempDir(), "dump.rdb")
	if out, err := redisCLIRDB(t, tp, path); err != nil {
		t.Fatalf("redis-cli --rdb: %v\n%s", err, out)
	}
	if keys := readRDBStrings(t, path); keys["before"].value != "1" || len(keys) != 1 {
		t.Fatalf("redis-cli --rdb got %v, want the stored snapshot with only before=1", keys)
	}
	var found bool
	for _, line := range strings.Split(tail(tp.logPath, 200), "\n") {
		var ev struct {
			Message           string  `json:"message"`
			Offset            int64   `json:"offset"`
			AgeSeconds        float64 `json:"age_seconds"`
			BytesBehindStream int64   `json:"bytes_behind_stream"`
		}
		if json.Unmarshal([]byte(line), &ev) != nil || !strings.HasPrefix(ev.Message, "serving the stored snapshot, not a fresh one") {
			continue
		}
		found = true
		if ev.Offset != snapOffset || ev.AgeSeconds < 1 || ev.BytesBehindStream != behind {
			t.Errorf("log line %s: want offset %d, age_seconds at least 1, bytes_behind_stream %d", line, snapOffset, behind)
		}
	}
	if !found {
		t.Errorf("no log line says which snapshot redis-cli --rdb got:\n%s", tail(tp.logPath, 20))
	}
}

// redisCLIRDB runs redis-cli --rdb against the proxy, for at most 30 s.
func redisCLIRDB(t *testing.T, tp *testProxy, path string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "redis-cli", "-p", strconv.Itoa(tp.port), "--rdb", path).CombinedOutput()
	if ctx.Err() != nil {
		t.Logf("redis-cli --rdb still waiting after 30 s: %s", out)
	}
	return string(out), err
}

func readNonEmptyLine(br *bufio.Reader) (string, error) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return line, err
		}
		if line = strings.TrimSpace(line); line != "" {
			return line, nil
		}
	}
}
