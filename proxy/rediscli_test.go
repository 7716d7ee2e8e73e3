package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// lockedBuffer collects a child's stderr while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Issue 22, point 7: redis-cli --replica sends REPLCONF rdb-filter-only ""
// and, as against Redis 7.0+, gets an empty RDB and then the stream from
// now: a marker written after it connected is within its first 100 lines,
// however much stream the backlog holds since the snapshot.
func TestRedisCliReplicaSeesTheStreamFromNow(t *testing.T) {
	m := redisproc.Start(t)
	p := startProxy(t, proxyConfig(t, m.Addr()))
	waitLinkUp(t, p)
	// Stream since the snapshot: without the filter, redis-cli would be
	// sent all of it before anything written from now on.
	ctx := context.Background()
	pipe := m.Client().Pipeline()
	for i := range 5000 {
		pipe.Set(ctx, "before:"+strconv.Itoa(i), i, 0)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	redisproc.Eventually(t, syncTimeout, "proxy caught up", func() (bool, string) {
		off := p.infoInt("replication", "master_repl_offset")
		return off == m.InfoInt("replication", "master_repl_offset"), fmt.Sprint(off)
	})

	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cli := exec.CommandContext(cctx, "redis-cli", "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "--replica")
	var stderr lockedBuffer
	cli.Stderr = &stderr
	out, err := cli.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); cli.Wait() }()
	redisproc.Eventually(t, 30*time.Second, "redis-cli --replica synced", func() (bool, string) {
		s := stderr.String()
		return strings.Contains(s, "SYNC done"), s
	})
	if s := stderr.String(); strings.Contains(s, "error") {
		t.Errorf("redis-cli --replica reported an error: %s", s)
	}
	if err := m.Client().Set(ctx, "marker", "after-connect", 0).Err(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var lines []string
	for len(lines) < 100 && sc.Scan() {
		lines = append(lines, sc.Text())
		if strings.Contains(sc.Text(), "after-connect") {
			t.Logf("marker at line %d of redis-cli --replica; stderr: %s", len(lines), stderr.String())
			return
		}
	}
	t.Fatalf("marker not within the first %d lines of redis-cli --replica (stderr %q); first lines:\n%s",
		len(lines), stderr.String(), strings.Join(lines[:min(len(lines), 10)], "\n"))
}

// waitLinkUp waits for the proxy's first sync from its master.
func waitLinkUp(t *testing.T, p *testProxy) {
	t.Helper()
	redisproc.Eventually(t, syncTimeout, "proxy linked to its master", func() (bool, string) {
		info := p.info("replication")
		return info["master_link_status"] == "up", fmt.Sprint(info)
	})
}
