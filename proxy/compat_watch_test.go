//go:build compat

package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/resp"
)

// streamTap is a raw replica that logs in as a user, full-syncs, and keeps
// every stream byte it is sent after the RDB, acknowledging as it reads.
type streamTap struct {
	*fakeReplica
	mu  sync.Mutex
	buf []byte
}

func dialTap(t *testing.T, addr, user, pass string, port int) *streamTap {
	t.Helper()
	tap, err := dialTapNoFatal(addr, user, pass, port)
	if err != nil {
		t.Fatalf("%s: full sync: %v", user, err)
	}
	t.Cleanup(func() { tap.conn.Close() })
	return tap
}

// startTapSync logs in as user and asks for a full sync.
func startTapSync(addr, user, pass string, port int) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(syncTimeout))
	out := resp.AppendCommand(nil, "AUTH", user, pass)
	out = resp.AppendCommand(out, "REPLCONF", "listening-port", strconv.Itoa(port))
	out = resp.AppendCommand(out, "REPLCONF", "capa", "eof", "capa", "psync2")
	out = resp.AppendCommand(out, "PSYNC", "?", "-1")
	if _, err := c.Write(out); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func dialTapNoFatal(addr, user, pass string, port int) (*streamTap, error) {
	c, err := startTapSync(addr, user, pass, port)
	if err != nil {
		return nil, err
	}
	tap := &streamTap{fakeReplica: &fakeReplica{conn: c, br: bufio.NewReader(c)}}
	if err := tap.readRDB(); err != nil {
		c.Close()
		return nil, err
	}
	return tap, nil
}

// run reads the stream until ctx ends, acknowledging what it holds.
func (s *streamTap) run(ctx context.Context) {
	context.AfterFunc(ctx, func() { s.conn.SetReadDeadline(time.Now()) })
	p := make([]byte, 64<<10)
	last := time.Now()
	for ctx.Err() == nil {
		s.conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _ := s.br.Read(p)
		s.mu.Lock()
		s.buf = append(s.buf, p[:n]...)
		end := s.offset + int64(len(s.buf))
		s.mu.Unlock()
		if time.Since(last) > 200*time.Millisecond {
			s.ack(end)
			last = time.Now()
		}
	}
}

func (s *streamTap) stream() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.buf)
}

// Review of issue 26: the watch of a replica's stream only observes. A raw
// replica whose stream is scanned (user with rdb_format redis-7.2) and one
// whose stream is not get the same bytes from the same offset, under a
// mixed load with commands Redis 7.2 does not know, a transaction, a Lua
// script, a 24 MB value and inline commands; a real 7.2.6 replica behind
// the same proxy ends at the master's offset with the master's data.
func TestCompatWatchedStreamSameBytes(t *testing.T) {
	t.Parallel()
	m := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"), masterArgs...)
	for i := 0; i < 200; i++ {
		if _, err := m.Do("SET", "seed"+strconv.Itoa(i), strings.Repeat("s", i)); err != nil {
			t.Fatal(err)
		}
	}
	cfg := proxyConfig(t, m.Addr())
	cfg.Users = []proxy.UserConfig{
		{Name: "ops", Password: "ops-pw", Role: "admin"},
		{Name: "fleet-new", Password: "new-pw", Role: "replica"},
		{Name: "fleet-old", Password: "old-pw", Role: "replica", RDBFormat: "redis-7.2"},
	}
	tp := startProxy(t, cfg)
	port := strconv.Itoa(tp.port)
	addr := "127.0.0.1:" + port
	redisproc.Eventually(t, syncTimeout, "the proxy's first snapshot", func() (bool, string) {
		return tp.infoInt("stats", "sync_full") >= 0 && tp.info("replication")["master_link_status"] == "up", ""
	})
	watched := dialTap(t, addr, "fleet-old", "old-pw", 1001)
	plain := dialTap(t, addr, "fleet-new", "new-pw", 1002)
	if watched.offset != plain.offset {
		t.Fatalf("full sync offsets: watched %d, plain %d", watched.offset, plain.offset)
	}
	old := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.2.6"),
		"--masteruser", "fleet-old", "--masterauth", "old-pw", "--replicaof", "127.0.0.1", port)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, tap := range []*streamTap{watched, plain} {
		wg.Add(1)
		go func() { defer wg.Done(); tap.run(ctx) }()
	}
	defer wg.Wait()
	defer cancel()

	big := strings.Repeat("b", 24<<20)
	load := [][]any{
		{"HSET", "h", "a", "1", "b", "2", "c", "3"},
		{"HEXPIRE", "h", 3600, "FIELDS", 1, "a"},
		{"HPEXPIRE", "h", 200, "FIELDS", 1, "b"},
		{"SET", "big", big},
		{"LPUSH", "l", "x", "y", "z"},
		{"ZADD", "z", 1.5, "m"},
		{"XADD", "s", "*", "f", "v"},
		{"SADD", "set", "a", "b"},
		{"SET", "ttl", "v", "PX", 600000},
		{"EVAL", "redis.call('SET', KEYS[1], 'x'); redis.call('INCR', KEYS[2]); return 1", 2, "lua1", "lua2"},
		{"HPEXPIREAT", "h", time.Now().Add(time.Hour).UnixMilli(), "FIELDS", 1, "c"},
		{"HPERSIST", "h", "FIELDS", 1, "c"},
		{"SET", "fake", "*1\r\n$10\r\nHPEXPIREAT\r\n"}, // a value that reads like a command
		{"DEL", "big"},
	}
	for round := 0; round < 3; round++ {
		for _, cmd := range load {
			if _, err := m.Do(cmd...); err != nil {
				t.Fatalf("%v: %v", cmd[0], err)
			}
		}
		// A transaction of commands 7.2 knows.
		if _, err := m.Client().TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, "tx1", round, 0)
			p.Incr(ctx, "tx2")
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Inline commands reach the stream as arrays.
	ic, err := net.Dial("tcp", m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	ic.Write([]byte("SET inline1 v1\r\nHSET inline2 f v\r\nPING\r\n"))
	br := bufio.NewReader(ic)
	for i := 0; i < 3; i++ {
		if _, err := br.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	ic.Close()
	if _, err := m.Do("HPERSIST", "h", "FIELDS", 1, "a"); err != nil {
		t.Fatal(err)
	}

	end := m.InfoInt("replication", "master_repl_offset")
	want := end - watched.offset
	redisproc.Eventually(t, syncTimeout, "both taps at the master's offset", func() (bool, string) {
		w, p := int64(len(watched.stream())), int64(len(plain.stream()))
		return w >= want && p >= want, strconv.FormatInt(w, 10) + " and " + strconv.FormatInt(p, 10) + " of " + strconv.FormatInt(want, 10)
	})
	w, p := watched.stream(), plain.stream()
	n := min(len(w), len(p))
	if !bytes.Equal(w[:n], p[:n]) {
		i := 0
		for i < n && w[i] == p[i] {
			i++
		}
		t.Fatalf("the watched stream differs from the plain one at offset %d", watched.offset+int64(i)+1)
	}
	if !bytes.Contains(w, []byte("HPEXPIREAT")) {
		t.Fatal("the stream carries no HPEXPIREAT: the load did not test the watch")
	}
	// Three rounds of HPEXPIREAT x3 and HPERSIST, one more HPERSIST; the
	// value that reads like a command is not counted.
	tapAddr := "127.0.0.1:1001"
	redisproc.Eventually(t, 10*time.Second, "the watched tap's count", func() (bool, string) {
		for _, v := range tp.info("proxy") {
			if strings.HasPrefix(v, "addr="+tapAddr+",") {
				return strings.Contains(v, ",unknown_commands=13,") || strings.HasSuffix(v, ",unknown_commands=13"), v
			}
		}
		return false, fmt.Sprint("no line for ", tapAddr, tp.info("proxy"))
	})
	waitCaughtUp(t, m, old)
	if got := old.InfoInt("replication", "master_repl_offset"); got < end {
		t.Fatalf("the 7.2 replica is at %d, the master at %d", got, end)
	}
	redisproc.WaitInSync(t, syncTimeout, m, old)
}

// Review of issue 26: inside MULTI/EXEC (a transaction, or a script's
// effects), a command the replica does not know makes Redis 7.2 discard
// the whole transaction (EXECABORT), not only that command: the proxy says
// so when it relays one.
func TestCompatUnknownCommandInTransaction(t *testing.T) {
	t.Parallel()
	m := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"), masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Users = []proxy.UserConfig{
		{Name: "ops", Password: "ops-pw", Role: "admin"},
		{Name: "fleet-old", Password: "old-pw", Role: "replica", RDBFormat: "redis-7.2"},
	}
	tp := startProxy(t, cfg)
	old := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.2.6"),
		"--masteruser", "fleet-old", "--masterauth", "old-pw", "--replicaof", "127.0.0.1", strconv.Itoa(tp.port))
	waitCaughtUp(t, m, old)
	ctx := context.Background()
	if _, err := m.Client().TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, "k", "v", 0)
		p.HSet(ctx, "h", "f", "1")
		p.Do(ctx, "HPEXPIRE", "h", 3600000, "FIELDS", 1, "f")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Do("SET", "after", "v"); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(t, m, old)
	// What Redis 7.2 does with it: the whole transaction is gone.
	if v, err := old.Do("EXISTS", "k", "h"); err != nil || v != int64(0) {
		t.Fatalf("EXISTS k h on the 7.2 replica: %v (%v); Redis 7.2 was expected to discard the transaction", v, err)
	}
	if v, err := old.Do("GET", "after"); err != nil || v != "v" {
		t.Fatalf("GET after on the 7.2 replica: %v (%v)", v, err)
	}
	log := tail(tp.logPath, 200)
	if !strings.Contains(log, `"in_transaction":true`) || !strings.Contains(log, "discards the whole transaction") {
		t.Fatalf("the proxy's log does not say the replica discards the transaction:\n%s", log)
	}
}

// Review of issue 26: a watched replica that resumes inside a command
// (+CONTINUE at an offset no real replica sends, as a chained proxy's
// stored end can be) gets the same bytes as an unwatched one from there;
// the watch stops with a log line, the stream goes on.
func TestCompatWatchedResumeInsideCommand(t *testing.T) {
	t.Parallel()
	m := redisproc.StartBinary(t, redisproc.Built(t, "redis-7.4.1"), masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Users = []proxy.UserConfig{
		{Name: "ops", Password: "ops-pw", Role: "admin"},
		{Name: "fleet-new", Password: "new-pw", Role: "replica"},
		{Name: "fleet-old", Password: "old-pw", Role: "replica", RDBFormat: "redis-7.2"},
	}
	tp := startProxy(t, cfg)
	addr := "127.0.0.1:" + strconv.Itoa(tp.port)
	redisproc.Eventually(t, syncTimeout, "the proxy's snapshot", func() (bool, string) {
		return tp.infoInt("backlog", "snapshot_bytes") > 0, ""
	})
	plain := dialTap(t, addr, "fleet-new", "new-pw", 4001)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); plain.run(ctx) }()
	if _, err := m.Do("HSET", "h", "a", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Do("HPEXPIRE", "h", 3600000, "FIELDS", 1, "a"); err != nil {
		t.Fatal(err)
	}
	end := m.InfoInt("replication", "master_repl_offset")
	redisproc.Eventually(t, syncTimeout, "the plain tap at the master's offset", func() (bool, string) {
		return plain.offset+int64(len(plain.stream())) >= end, ""
	})
	i := bytes.Index(plain.stream(), []byte("HPEXPIREAT"))
	if i < 0 {
		t.Fatal("no HPEXPIREAT in the stream")
	}
	from := plain.offset + int64(i) + 4 // inside the command's name: the next byte wanted
	replid := tp.info("replication")["master_replid"]

	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(syncTimeout))
	out := resp.AppendCommand(nil, "AUTH", "fleet-old", "old-pw")
	out = resp.AppendCommand(out, "REPLCONF", "listening-port", "4002")
	out = resp.AppendCommand(out, "REPLCONF", "capa", "eof", "capa", "psync2")
	out = resp.AppendCommand(out, "PSYNC", replid, strconv.FormatInt(from, 10))
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(line, "+CONTINUE") {
			break
		}
		if !strings.HasPrefix(line, "+OK") {
			t.Fatalf("PSYNC %s %d: %q", replid, from, line)
		}
	}
	for _, cmd := range [][]any{{"HPEXPIRE", "h", 7200000, "FIELDS", 1, "a"}, {"SET", "k", "v"}} {
		if _, err := m.Do(cmd...); err != nil {
			t.Fatal(err)
		}
	}
	end = m.InfoInt("replication", "master_repl_offset")
	got := make([]byte, end-from+1)
	if _, err := io.ReadFull(br, got); err != nil {
		t.Fatal(err)
	}
	redisproc.Eventually(t, syncTimeout, "the plain tap at the master's offset", func() (bool, string) {
		return plain.offset+int64(len(plain.stream())) >= end, ""
	})
	want := plain.stream()[from-plain.offset-1 : end-plain.offset]
	if !bytes.Equal(got, want) {
		t.Fatalf("the watched replica resumed at %d got %q, the plain one %q", from, got, want)
	}
	redisproc.Eventually(t, 10*time.Second, "the watch's log line", func() (bool, string) {
		return strings.Contains(tail(tp.logPath, 200), "stopped counting commands unknown to the replica"), ""
	})
}
