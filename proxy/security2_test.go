package proxy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sys/unix"

	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/resp"
)

// withheldCommand is the largest command an unauthenticated client may
// send (10 arguments of 16 KiB), without its last byte.
func withheldCommand() []byte {
	var b bytes.Buffer
	b.WriteString("*10\r\n")
	arg := bytes.Repeat([]byte("x"), 16<<10)
	for i := 0; i < 10; i++ {
		fmt.Fprintf(&b, "$%d\r\n", len(arg))
		b.Write(arg)
		b.WriteString("\r\n")
	}
	return b.Bytes()[:b.Len()-1]
}

// Issue 23, point 1: 1000 unauthenticated connections, each inside the
// per-connection limits and withholding its last byte, keep the proxy (a
// child process) under 64 MiB of peak RSS: past the budget of all their
// buffers, the largest are closed, and INFO stats counts them. A replica
// keeps streaming meanwhile.
func TestUnauthenticatedBuffersHaveATotalBudget(t *testing.T) {
	t.Parallel()
	const conns = 1000
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.RequirePass = "proxy-secret"
	cfg.AuthTimeout = proxy.Duration(time.Minute) // the budget, not the deadline, must close them
	tp := newProcessProxy(t, cfg)
	r := &relay{master: m, proxy: tp}
	r.replicas = append(r.replicas, redisproc.Start(t, "--masterauth", "proxy-secret", "--replicaof", "127.0.0.1", strconv.Itoa(tp.port)))
	stopLoad := runLoad(t, m, 231)
	r.waitInSyncWhileLoading(t)

	cmd := withheldCommand()
	open := make([]net.Conn, conns)
	t.Cleanup(func() {
		for _, c := range open {
			if c != nil {
				c.Close()
			}
		}
	})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < conns; i += 8 {
				c, err := net.DialTimeout("tcp", cfg.Listen, 10*time.Second)
				if err != nil {
					t.Errorf("connection %d: %v", i, err)
					return
				}
				open[i] = c
				// An evicted client's write may fail: that is the point.
				c.SetWriteDeadline(time.Now().Add(30 * time.Second))
				c.Write(cmd)
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// Let the proxy read what the sockets still hold.
	redisproc.Eventually(t, 30*time.Second, "evictions to stop", func() (bool, string) {
		a := tp.infoInt("stats", "evicted_clients")
		time.Sleep(time.Second)
		b := tp.infoInt("stats", "evicted_clients")
		return a > 0 && a == b, fmt.Sprintf("evicted_clients %d then %d", a, b)
	})
	peak := peakRSS(t, tp.cmd.Process.Pid)
	evicted := tp.infoInt("stats", "evicted_clients")
	t.Logf("%d withheld connections: peak RSS %d MiB, %d evicted", conns, peak>>20, evicted)
	if peak > 64<<20 {
		t.Fatalf("the proxy's peak RSS was %d MiB", peak>>20)
	}
	if evicted < conns/2 {
		t.Fatalf("evicted_clients %d: the budget should close most of %d clients of 160 KiB", evicted, conns)
	}
	// A client with a small buffer is never the largest: AUTH still works.
	w, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, err := w.do("AUTH", "proxy-secret"); got != "+OK" {
		t.Fatalf("AUTH beside the withheld clients: %q %v", got, err)
	}
	waitOps(t, m, 1000)
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "proxy connected_slaves", tp.infoInt("replication", "connected_slaves"), 1)
}

// askForRefresh sends what a downstream replproxy sends for a snapshot at
// need or later, as user, and returns the first reply line (or "" when
// none came within wait) and the connection, which the caller closes.
func askForRefresh(t *testing.T, addr, user, pass string, need int64, wait time.Duration) (string, net.Conn) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var req []byte
	req = resp.AppendCommand(req, "AUTH", user, pass)
	req = resp.AppendCommand(req, "REPLCONF", "capa", fanout.CapaRefresh)
	req = resp.AppendCommand(req, "REPLCONF", "rdb-only", "1")
	req = resp.AppendCommand(req, "PSYNC", "?", strconv.FormatInt(need, 10))
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(wait))
	for i := 0; i < 3; i++ { // AUTH and the two REPLCONFs
		if line, err := br.ReadString('\n'); err != nil || line != "+OK\r\n" {
			t.Fatalf("handshake as %s: %q %v", user, line, err)
		}
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return "", conn
		}
		if line != "\n" { // keepalives while it waits
			return strings.TrimSpace(line), conn
		}
	}
}

func fullResyncOffset(t *testing.T, line string) int64 {
	t.Helper()
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "+FULLRESYNC" {
		t.Fatalf("want +FULLRESYNC <replid> <offset>, got %q", line)
	}
	off, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return off
}

// writeAndFollow writes a key and waits for the proxy to hold it; it
// returns the proxy's offset then.
func writeAndFollow(t *testing.T, m *redisproc.Server, p *testProxy, key string) int64 {
	t.Helper()
	m.Client().Set(t.Context(), key, "v", 0)
	want := m.InfoInt("replication", "master_repl_offset")
	redisproc.Eventually(t, 10*time.Second, "the proxy to hold "+key, func() (bool, string) {
		got := p.infoInt("replication", "master_repl_offset")
		return got >= want, fmt.Sprintf("proxy at %d, master at %d", got, want)
	})
	return p.infoInt("replication", "master_repl_offset")
}

func refreshUsers() []proxy.UserConfig {
	return []proxy.UserConfig{
		{Name: "repl", Password: "replica-pw", Role: "replica"},
		{Name: "down", Password: "proxy-pw", Role: "proxy"},
		{Name: "op", Password: "op-pw", Role: "admin"},
	}
}

// Issue 23, point 2: a replica-role user's capa replproxy-refresh is
// ignored. It gets the stored snapshot at once, as any replica, and the
// master is not forked (its sync_full stays at the proxy's first sync),
// past the 10 s floor between urgent refreshes.
func TestReplicaRoleCannotForkTheMaster(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Users = refreshUsers()
	p := startProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := p.info("replication")["master_link_status"]
		return st == "up", st
	})
	stored := p.infoInt("proxy", "snapshot_offset")
	deadline := time.Now().Add(12 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		end := writeAndFollow(t, m, p, "k"+strconv.Itoa(i))
		line, conn := askForRefresh(t, cfg.Listen, "repl", "replica-pw", end, 5*time.Second)
		conn.Close()
		if off := fullResyncOffset(t, line); off >= end {
			t.Fatalf("a replica-role user asked for offset %d and got a snapshot at %d", end, off)
		}
		time.Sleep(500 * time.Millisecond)
	}
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 1)
	if got := p.infoInt("proxy", "snapshot_offset"); got != stored && stored >= 0 {
		t.Fatalf("the stored snapshot moved from %d to %d", stored, got)
	}
}

// Issue 23, point 2: whoever asks, at most snapshot.max_refreshes_per_hour
// refreshes fork the master in an hour. A proxy-role user gets two
// (10 s apart, the urgent floor); the third is refused, counted in INFO
// stats and logged, and the master's sync_full stays at 3.
func TestRefreshesPerHourAreCapped(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Users = refreshUsers()
	cfg.Snapshot.MinInterval = proxy.Duration(10 * time.Minute)
	cfg.Snapshot.MaxRefreshesPerHour = 2
	p := startProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := p.info("replication")["master_link_status"]
		return st == "up", st
	})
	for i := 0; i < 2; i++ {
		end := writeAndFollow(t, m, p, "k"+strconv.Itoa(i))
		line, conn := askForRefresh(t, cfg.Listen, "down", "proxy-pw", end, 60*time.Second)
		conn.Close()
		if off := fullResyncOffset(t, line); off < end {
			t.Fatalf("refresh %d: asked for offset %d, got a snapshot at %d", i+1, end, off)
		}
	}
	expectInt(t, "master sync_full after two refreshes", m.InfoInt("stats", "sync_full"), 3)
	end := writeAndFollow(t, m, p, "k-third")
	waiting := make(chan string, 1)
	go func() {
		line, conn := askForRefresh(t, cfg.Listen, "down", "proxy-pw", end, 20*time.Second)
		conn.Close()
		waiting <- line
	}()
	redisproc.Eventually(t, 20*time.Second, "the third refresh to be refused", func() (bool, string) {
		n := p.infoInt("stats", "snapshot_refreshes_refused")
		return n == 1, fmt.Sprintf("snapshot_refreshes_refused %d", n)
	})
	if line := <-waiting; line != "" {
		t.Fatalf("the third request was served: %q", line)
	}
	expectInt(t, "master sync_full", m.InfoInt("stats", "sync_full"), 3)
	expectInt(t, "snapshot_refreshes_refused", p.infoInt("stats", "snapshot_refreshes_refused"), 1)
	if log, _ := os.ReadFile(p.logPath); !strings.Contains(string(log), "max_refreshes_per_hour") {
		t.Fatal("no log line says the refresh was refused")
	}
}

// Issue 23, point 3: the metrics listener closes idle keep-alive
// connections and caps how many are open, so they cannot take the
// descriptors the replication port needs. The proxy (a child process) runs
// with 1024 descriptors; 3000 connections each make one request and stay
// idle. All are closed within the idle timeout, the replication port
// accepts throughout, and a replica keeps streaming.
func TestMetricsListenerIsBounded(t *testing.T) {
	t.Parallel()
	const conns = 3000
	idle := 3 * time.Second
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.MetricsListen = "127.0.0.1:" + strconv.Itoa(redisproc.FreePort(t))
	cfg.MetricsIdleTimeout = proxy.Duration(idle)
	tp := newProcessProxy(t, cfg)
	lim := &unix.Rlimit{Cur: 1024, Max: 1024}
	if err := unix.Prlimit(tp.cmd.Process.Pid, unix.RLIMIT_NOFILE, lim, nil); err != nil {
		t.Skipf("cannot lower the proxy's descriptor limit: %v", err)
	}
	r := &relay{master: m, proxy: tp}
	r.addReplica(t)
	stopLoad := runLoad(t, m, 233)
	r.waitInSyncWhileLoading(t)

	open := make([]net.Conn, conns)
	t.Cleanup(func() {
		for _, c := range open {
			if c != nil {
				c.Close()
			}
		}
	})
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < conns; i += 8 {
				c, err := net.DialTimeout("tcp", cfg.MetricsListen, 10*time.Second)
				if err != nil {
					t.Errorf("metrics connection %d: %v", i, err)
					return
				}
				open[i] = c
				c.Write([]byte("GET /healthz HTTP/1.1\r\nHost: replproxy\r\n\r\n"))
			}
		}()
	}
	// The replication port accepts while the metrics connections pile up.
	for i := 0; i < 5; i++ {
		w, err := dialWire(cfg.Listen)
		if err != nil {
			t.Fatalf("replication port: %v", err)
		}
		w.SetReadDeadline(time.Now().Add(5 * time.Second))
		if got, err := w.do("PING"); got != "+PONG" {
			t.Fatalf("PING on the replication port beside %d metrics connections: %q %v", conns, got, err)
		}
		w.Close()
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	opened := time.Since(start)
	for i, c := range open {
		expectClosed(t, c, idle+10*time.Second, fmt.Sprintf("metrics connection %d", i))
	}
	t.Logf("%d metrics connections opened in %s, all closed %s after the first", conns, opened.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if time.Since(start) > opened+idle+10*time.Second {
		t.Fatalf("the idle metrics connections took %s to close (idle timeout %s)", time.Since(start)-opened, idle)
	}
	w, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, err := w.do("PING"); got != "+PONG" {
		t.Fatalf("PING after: %q %v", got, err)
	}
	if log, _ := os.ReadFile(tp.logPath); strings.Contains(string(log), "too many open files") {
		t.Fatal("the proxy ran out of descriptors")
	}
	waitOps(t, m, 1000)
	stopLoad()
	r.waitInSync(t)
}

// announcingReplica attaches as a replica that announces ip:port, takes the RDB
// and keeps acknowledging, so that it stays online until the test ends.
func announcingReplica(t *testing.T, addr, ip string, port int, auth ...string) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var req []byte
	n := 3
	if len(auth) > 0 {
		req = resp.AppendCommand(req, append([]string{"AUTH"}, auth...)...)
		n++
	}
	req = resp.AppendCommand(req, "REPLCONF", "listening-port", strconv.Itoa(port))
	if ip != "" {
		req = resp.AppendCommand(req, "REPLCONF", "ip-address", ip)
		n++
	}
	req = resp.AppendCommand(req, "REPLCONF", "capa", "psync2")
	req = resp.AppendCommand(req, "PSYNC", "?", "-1")
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	for i := 0; i < n-1; i++ {
		if line, err := br.ReadString('\n'); err != nil || line != "+OK\r\n" {
			t.Fatalf("fake replica %s:%d handshake: %q %v", ip, port, line, err)
		}
	}
	var offset int64
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("fake replica %s:%d: %v", ip, port, err)
		}
		if strings.HasPrefix(line, "+FULLRESYNC") {
			offset = fullResyncOffset(t, strings.TrimSpace(line))
		}
		if strings.HasPrefix(line, "$") {
			size, _ := strconv.ParseInt(strings.TrimSpace(line[1:]), 10, 64)
			if _, err := io.CopyN(io.Discard, br, size); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	conn.SetReadDeadline(time.Time{})
	go io.Copy(io.Discard, br)
	go func() {
		for {
			if _, err := conn.Write(resp.AppendCommand(nil, "REPLCONF", "ACK", strconv.FormatInt(offset, 10))); err != nil {
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
}

// slotMapAddrs is every node address in the proxy's CLUSTER SLOTS.
func slotMapAddrs(t *testing.T, addr string) (string, error) {
	c := redis.NewClient(&redis.Options{Addr: addr, Username: "mon", Password: "monitor-pw"})
	defer c.Close()
	slots, err := c.ClusterSlots(t.Context()).Result()
	if err != nil {
		return "", err
	}
	var out []string
	for _, s := range slots {
		for _, n := range s.Nodes {
			out = append(out, n.Addr)
		}
	}
	return strings.Join(out, " "), nil
}

// Issue 23, point 4: a replica-role client that announces 203.0.113.66:6666
// (a string here: nothing connects to it) is never in the slot map; a
// replica that announces its own address is. With an operator's
// master.cluster.announce, the map lists exactly that.
func TestSlotMapListsNoAnnouncedStranger(t *testing.T) {
	t.Parallel()
	cl := redisproc.StartCluster(t, 3, 0, masterArgs...)
	users := []proxy.UserConfig{
		{Name: "repl", Password: "replica-pw", Role: "replica"},
		{Name: "mon", Password: "monitor-pw", Role: "monitor"},
		{Name: "op", Password: "op-pw", Role: "admin"},
	}
	start := func(announce ...string) *testProxy {
		cfg := proxyConfig(t, "")
		cfg.Users = users
		cfg.Master.Cluster.Seeds = []string{cl.Nodes[0].Addr()}
		cfg.Master.Cluster.Shard = cl.Primaries()[0].NodeID()
		cfg.Master.Cluster.Announce = announce
		p := startProxy(t, cfg)
		redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
			st := p.info("replication")["master_link_status"]
			return st == "up", st
		})
		return p
	}
	p := start()
	announcingReplica(t, p.cfg.Listen, "203.0.113.66", 6666, "repl", "replica-pw")
	announcingReplica(t, p.cfg.Listen, "127.0.0.1", 7777, "repl", "replica-pw")
	announcingReplica(t, p.cfg.Listen, "", 7778, "repl", "replica-pw")
	redisproc.Eventually(t, 30*time.Second, "three replicas online", func() (bool, string) {
		n := p.infoInt("replication", "connected_slaves")
		return n == 3, fmt.Sprint("connected_slaves ", n)
	})
	var addrs string
	redisproc.Eventually(t, 30*time.Second, "the slot map to list the honest replicas", func() (bool, string) {
		var err error
		addrs, err = slotMapAddrs(t, p.cfg.Listen)
		return err == nil && strings.Contains(addrs, "127.0.0.1:7777") && strings.Contains(addrs, "127.0.0.1:7778"), fmt.Sprint(addrs, err)
	})
	if strings.Contains(addrs, "203.0.113.66") || strings.Contains(addrs, "6666") {
		t.Fatalf("the slot map lists an address a replica-role client announced: %s", addrs)
	}
	t.Logf("slot map nodes: %s", addrs)

	// The operator's list replaces the replicas' own addresses.
	q := start("198.18.0.5:6379")
	announcingReplica(t, q.cfg.Listen, "203.0.113.66", 6666, "repl", "replica-pw")
	announcingReplica(t, q.cfg.Listen, "127.0.0.1", 7777, "repl", "replica-pw")
	redisproc.Eventually(t, 30*time.Second, "the slot map to list the configured address", func() (bool, string) {
		addrs, err := slotMapAddrs(t, q.cfg.Listen)
		return err == nil && addrs == "198.18.0.5:6379", fmt.Sprint(addrs, err)
	})
}

// Issue 23, point 8: export --out writes through a temp file and a rename,
// mode 0600: a symlink at --out is replaced, not followed; an existing
// file's looser mode is not kept; a failed export leaves the target whole.
func TestExportOutIsWrittenSafely(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	tp := startProxy(t, cfg)
	redisproc.Eventually(t, syncTimeout, "the proxy's first sync", func() (bool, string) {
		st := tp.info("replication")["master_link_status"]
		return st == "up", st
	})
	end := writeAndFollow(t, m, tp, "exported")
	dir := t.TempDir()
	victim := filepath.Join(dir, "victim")
	os.WriteFile(victim, []byte("precious"), 0o644)
	out := filepath.Join(dir, "out.resp")
	if err := os.Symlink(victim, out); err != nil {
		t.Fatal(err)
	}
	export := func(from, to int64) error {
		cmd := exec.Command(binary, "export", "--data-dir", cfg.DataDir, "--from", strconv.FormatInt(from, 10), "--to", strconv.FormatInt(to, 10), "--out", out)
		b, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, b)
		}
		return nil
	}
	if err := export(1, end); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious" {
		t.Fatalf("export followed the symlink at --out: the victim now holds %.60q", b)
	}
	fi, err := os.Lstat(out)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("--out is %v (%v), want a regular file of mode 0600", fi.Mode(), err)
	}
	if b, _ := os.ReadFile(out); !strings.Contains(string(b), "exported") {
		t.Fatalf("the export lacks the key written: %.200q", b)
	}
	// A looser existing file: replaced by a 0600 one.
	os.Remove(out)
	os.WriteFile(out, []byte("old export"), 0o644)
	if err := export(1, end); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o600 {
		t.Fatalf("--out kept mode %v", fi.Mode().Perm())
	}
	// A failed export (a range past the stream) leaves the target whole.
	os.WriteFile(out, []byte("old export"), 0o600)
	if err := export(1, end+1<<30); err == nil {
		t.Fatal("an export past the stream succeeded")
	}
	if b, _ := os.ReadFile(out); string(b) != "old export" {
		t.Fatalf("a failed export changed the target: %.60q", b)
	}
	if left, _ := filepath.Glob(out + ".tmp-*"); len(left) > 0 {
		t.Fatalf("temp files left behind: %v", left)
	}
}
