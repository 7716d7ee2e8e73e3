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

	"github.com/redis/go-redis/v9"

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

// Issue 22, point 8: redis-cli --stat reads INFO's Keyspace, Memory,
// Clients, Stats and Persistence fields; each missing one printed as
// -9223372036854775808. For a few seconds it prints no negative number.
func TestRedisCliStat(t *testing.T) {
	m := redisproc.Start(t)
	p := startProxy(t, proxyConfig(t, m.Addr()))
	waitLinkUp(t, p)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	// stdbuf: redis-cli's stdout is a pipe here, fully buffered, and the
	// process is killed at the end rather than exiting.
	out, _ := exec.CommandContext(ctx, "stdbuf", "-oL", "redis-cli", "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "--stat", "-i", "0.5").Output()
	t.Logf("redis-cli --stat:\n%s", out)
	var rows int
	for _, line := range strings.Split(string(out), "\n") {
		if line == "" || strings.HasPrefix(line, "-------") || strings.HasPrefix(line, "keys") {
			continue
		}
		rows++
		if strings.Contains(line, "-") {
			t.Errorf("negative number in redis-cli --stat: %q", line)
		}
		f := strings.Fields(line)
		// keys, mem, clients, blocked, requests, (+delta), connections
		if len(f) < 7 || f[0] != "0" || f[1] == "0B" || f[3] != "0" {
			t.Errorf("redis-cli --stat row %q: want 0 keys, the process's memory, 0 blocked", line)
		}
	}
	if rows < 3 {
		t.Fatalf("redis-cli --stat printed %d rows in 3s", rows)
	}
}

// Point 8: COMMAND COUNT is an integer, and CLIENT LIST, INFO and HELP
// answer an admin as Redis does; the error for an unknown subcommand
// points to a command that exists.
func TestClientAndCommandIntrospection(t *testing.T) {
	m := redisproc.Start(t)
	p := startProxy(t, proxyConfig(t, m.Addr()))
	waitLinkUp(t, p)
	rep := redisproc.Start(t, "--replicaof", "127.0.0.1", strconv.Itoa(p.port))
	redisproc.WaitInSync(t, syncTimeout, m, rep)

	ctx := context.Background()
	c := redis.NewClient(&redis.Options{Addr: p.cfg.Listen, DisableIdentity: true, Protocol: 2})
	defer c.Close()
	if n, err := c.Do(ctx, "COMMAND", "COUNT").Int64(); err != nil || n <= 0 {
		t.Fatalf("COMMAND COUNT: %d %v", n, err)
	}
	if err := c.Do(ctx, "CLIENT", "SETNAME", "operator").Err(); err != nil {
		t.Fatal(err)
	}
	list, err := c.Do(ctx, "CLIENT", "LIST").Text()
	if err != nil {
		t.Fatalf("CLIENT LIST: %v", err)
	}
	t.Logf("CLIENT LIST:\n%s", list)
	var mine, replica string
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		if strings.Contains(line, " name=operator ") {
			mine = line
		}
		if strings.Contains(line, " flags=S ") {
			replica = line
		}
	}
	if !strings.Contains(mine, " cmd=client|list ") || !strings.Contains(mine, " user=default ") {
		t.Errorf("this connection's line: %q", mine)
	}
	if !strings.Contains(replica, " cmd=psync ") {
		t.Errorf("the replica's line: %q", replica)
	}
	info, err := c.Do(ctx, "CLIENT", "INFO").Text()
	if err != nil || !strings.Contains(info, " name=operator ") || strings.Count(info, "\n") != 1 {
		t.Fatalf("CLIENT INFO: %q %v", info, err)
	}
	id, err := c.Do(ctx, "CLIENT", "ID").Int64()
	if err != nil || !strings.HasPrefix(info, "id="+strconv.FormatInt(id, 10)+" ") {
		t.Fatalf("CLIENT ID %d %v, CLIENT INFO %q", id, err, info)
	}
	if typed, err := c.Do(ctx, "CLIENT", "LIST", "TYPE", "replica").Text(); err != nil || strings.Count(typed, "\n") != 1 || !strings.Contains(typed, " flags=S ") {
		t.Fatalf("CLIENT LIST TYPE replica: %q %v", typed, err)
	}
	help, err := c.Do(ctx, "CLIENT", "HELP").StringSlice()
	if err != nil || len(help) < 4 {
		t.Fatalf("CLIENT HELP: %q %v", help, err)
	}
	err = c.Do(ctx, "CLIENT", "NOSUCH").Err()
	if err == nil || !strings.Contains(err.Error(), "Try CLIENT HELP") {
		t.Fatalf("CLIENT NOSUCH: %v", err)
	}
	// Every command COMMAND COUNT counts is one the proxy answers.
	n, _ := c.Do(ctx, "COMMAND", "COUNT").Int64()
	stats := p.info("stats")
	if stats["total_commands_processed"] == "" || stats["total_commands_processed"] == "0" {
		t.Errorf("total_commands_processed: %q", stats["total_commands_processed"])
	}
	t.Logf("COMMAND COUNT %d", n)
}
