package proxy_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
	"github.com/replproxy/replproxy/resp"
)

// externalIPv4 is an address of this machine that is not loopback by
// Redis' definition (127.0.0.0/8 is), e.g. eth0's.
func externalIPv4(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() {
			return n.IP.To4()
		}
	}
	t.Skip("this machine has no non-loopback IPv4 address to connect from")
	return nil
}

// dialFrom connects to port on ip from that same address, so the proxy
// sees a non-loopback peer.
func dialFrom(ip net.IP, port int) (*wire, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)))
	if err != nil {
		return nil, err
	}
	return newWire(c), nil
}

// expectClosed waits for the peer to close: EOF, or a reset when it closed
// with input unread.
func expectClosed(t *testing.T, c net.Conn, within time.Duration, what string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	_, err := io.Copy(io.Discard, c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("%s: connection not closed within %s: %v", what, within, err)
	}
}

// Issue 10, point 1: a proxy on 0.0.0.0 with no password refuses REPLICAOF
// and SYNC from a non-loopback address with -DENIED, and keeps following
// its real master; loopback clients and replicas work. With protected_mode
// off, the same remote client is served.
func TestProtectedModeDeniesRemoteClients(t *testing.T) {
	t.Parallel()
	ext := externalIPv4(t)
	t.Logf("connecting from %s", ext)
	m := redisproc.Start(t, masterArgs...)
	foreign := redisproc.Start(t)
	if _, err := foreign.Do("SET", "foreign-key", "foreign data"); err != nil {
		t.Fatal(err)
	}
	cfg := proxyConfig(t, m.Addr())
	port := portOf(cfg.Listen)
	cfg.Listen = "0.0.0.0:" + strconv.Itoa(port)
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	r.addReplica(t) // over loopback
	stopLoad := runLoad(t, m, 101)

	for _, cmd := range [][]string{{"REPLICAOF", "127.0.0.1", strconv.Itoa(foreign.Port)}, {"SYNC"}} {
		w, err := dialFrom(ext, port)
		if err != nil {
			t.Fatal(err)
		}
		got, err := w.do(cmd...)
		if err != nil || !strings.HasPrefix(got, "-DENIED replproxy is running in protected mode") {
			t.Fatalf("%s from %s: %q %v, want -DENIED", cmd[0], ext, got, err)
		}
		expectClosed(t, w, 5*time.Second, cmd[0]+" after -DENIED")
		w.Close()
	}
	w, err := dialWire("127.0.0.1:" + strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, err := w.do("PING"); got != "+PONG" {
		t.Fatalf("loopback PING: %q %v", got, err)
	}

	waitOps(t, m, 1000)
	stopLoad()
	r.waitInSync(t)
	info := r.proxy.info("replication")
	if info["master_port"] != strconv.Itoa(m.Port) || info["master_link_status"] != "up" {
		t.Fatalf("the proxy follows port %s (%s), want its master %d", info["master_port"], info["master_link_status"], m.Port)
	}
	expectInt(t, "foreign connected_slaves", foreign.InfoInt("replication", "connected_slaves"), 0)
	expectInt(t, "proxy upstream_full_syncs", r.proxy.infoInt("stats", "upstream_full_syncs"), 1)
	expectInt(t, "proxy protected_mode_denied", r.proxy.infoInt("stats", "protected_mode_denied"), 2)

	// Turned off, protected mode lets the same client in.
	open := proxyConfig(t, m.Addr())
	openPort := portOf(open.Listen)
	open.Listen = "0.0.0.0:" + strconv.Itoa(openPort)
	open.ProtectedMode = false
	startProxy(t, open)
	w2, err := dialFrom(ext, openPort)
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if got, err := w2.do("PING"); got != "+PONG" {
		t.Fatalf("remote PING with protected_mode off: %q %v", got, err)
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// Issue 10, point 2: a real replica authenticates with the masteruser and
// masterauth of a replica-role user and replicates; those credentials get
// -NOPERM for REPLICAOF. Three Sentinels with auth-user/auth-pass of an
// admin user discover the proxy and repoint it at failover.
func TestUsersWithRoles(t *testing.T) {
	t.Parallel()
	sentinelUser := []string{"--user", "sentinel", "on", ">sentinel-pw", "~*", "&*", "+@all"}
	m := redisproc.Start(t, append(append([]string{}, masterArgs...), sentinelUser...)...)
	s := redisproc.Start(t, append(append(append([]string{}, masterArgs...), sentinelUser...), "--replicaof", "127.0.0.1", strconv.Itoa(m.Port))...)
	cfg := proxyConfig(t, m.Addr())
	cfg.Users = []proxy.UserConfig{
		{Name: "repl", Password: "replica-pw", Role: "replica"},
		{Name: "sentinel", Password: "sentinel-pw", Role: "admin"},
		{Name: "mon", Password: "#" + sha256Hex("monitor-pw"), Role: "monitor"},
	}
	p := startProxy(t, cfg)
	rep := redisproc.Start(t, "--masteruser", "repl", "--masterauth", "replica-pw", "--replicaof", "127.0.0.1", strconv.Itoa(p.port))
	var sentinels []string
	for i := 0; i < 3; i++ {
		sentinels = append(sentinels, startSentinel(t, m.Port, "sentinel auth-user mymaster sentinel", "sentinel auth-pass mymaster sentinel-pw"))
	}
	stopLoad := runLoad(t, m, 102)
	waitOps(t, m, 1000)
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, m, s, rep)

	w, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	steps := []struct {
		args  []string
		reply string
	}{
		{[]string{"REPLICAOF", "127.0.0.1", strconv.Itoa(s.Port)}, "-NOAUTH"},
		{[]string{"AUTH", "replica-pw"}, "-WRONGPASS"}, // no default user: requirepass is not set
		{[]string{"AUTH", "repl", "wrong"}, "-WRONGPASS"},
		{[]string{"AUTH", "repl", "replica-pw"}, "+OK"},
		{[]string{"REPLICAOF", "127.0.0.1", strconv.Itoa(s.Port)}, "-NOPERM User repl has no permissions to run the 'replicaof' command"},
		{[]string{"SLAVEOF", "127.0.0.1", strconv.Itoa(s.Port)}, "-NOPERM"},
		{[]string{"CONFIG", "REWRITE"}, "-NOPERM"},
		{[]string{"MULTI"}, "-NOPERM"},
		{[]string{"ROLE"}, "slave"},
		{[]string{"AUTH", "mon", "monitor-pw"}, "+OK"},
		{[]string{"CLIENT", "SETNAME", "exporter"}, "+OK"},
		{[]string{"CLIENT", "KILL", "TYPE", "normal"}, "-NOPERM User mon has no permissions to run the 'client|kill' command"},
		{[]string{"PUBLISH", "__sentinel__:hello", "x"}, "-NOPERM"},
		{[]string{"PSYNC", "?", "-1"}, "-NOPERM"},
		{[]string{"SUBSCRIBE", "other"}, "-NOPERM User mon has no permissions to access the 'other' channel"},
		{[]string{"SUBSCRIBE", "__sentinel__:hello"}, "subscribe"},
	}
	for _, st := range steps {
		got, err := w.do(st.args...)
		if err != nil || !strings.HasPrefix(got, st.reply) {
			t.Fatalf("%v: %q %v, want %q", st.args, got, err, st.reply)
		}
	}

	for _, sn := range sentinels {
		redisproc.Eventually(t, 30*time.Second, "sentinels to know both replicas and each other", func() (bool, string) {
			f := sentinelMaster(sn)
			return f["num-slaves"] == "2" && f["num-other-sentinels"] == "2", fmt.Sprint(f["num-slaves"], " ", f["num-other-sentinels"])
		})
		redisproc.Eventually(t, 30*time.Second, "sentinel to see the proxy as a healthy replica", func() (bool, string) {
			flags := replicaFlags(sn, p.port)
			return flags == "slave", flags
		})
	}
	m.Kill()
	redisproc.Eventually(t, 60*time.Second, "S to be promoted", func() (bool, string) {
		role := s.Info("replication")["role"]
		return role == "master", role
	})
	// The proxy has no Sentinel of its own here: only the sentinels'
	// SLAVEOF, authenticated as the admin user, can move it.
	redisproc.Eventually(t, 60*time.Second, "the sentinels to repoint the proxy at S", func() (bool, string) {
		info := p.info("replication")
		return info["master_port"] == strconv.Itoa(s.Port) && info["master_link_status"] == "up",
			info["master_port"] + " " + info["master_link_status"]
	})
	stopLoad = runLoad(t, s, 103)
	waitOps(t, s, 500)
	stopLoad()
	redisproc.WaitInSync(t, syncTimeout, s, rep)
}

// peakRSS is a process's high-water resident set (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM in /proc status")
	return 0
}

// floodCommand writes one command of about 500 MB without authenticating:
// 1000 arguments of 500 KB, or 10 of 50 MB. It returns how much the proxy
// took before it closed the connection, and the reply it sent, if any.
func floodCommand(addr string, many bool) (sent int64, reply string, err error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	replyCh := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(c).ReadString('\n')
		replyCh <- strings.TrimSpace(line)
	}()
	args, size := 10, 50_000_000
	if many {
		args, size = 1000, 500_000
	}
	chunk := make([]byte, 64<<10)
	write := func(b []byte) error {
		n, err := c.Write(b)
		sent += int64(n)
		return err
	}
	err = write([]byte(fmt.Sprintf("*%d\r\n", args)))
	for i := 0; i < args && err == nil; i++ {
		err = write([]byte(fmt.Sprintf("$%d\r\n", size)))
		for left := size; left > 0 && err == nil; left -= len(chunk) {
			err = write(chunk[:min(left, len(chunk))])
		}
		if err == nil {
			err = write([]byte("\r\n"))
		}
	}
	if err == nil {
		return sent, "", errors.New("the whole command was accepted")
	}
	return sent, <-replyCh, nil
}

// Issue 10, point 3: four unauthenticated clients each send a 500 MB
// command. The proxy (a child process) stays under 64 MiB of peak RSS,
// closes them, and replication goes on with equal digests.
func TestUnauthenticatedFloodIsCheap(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.RequirePass = "proxy-secret"
	tp := newProcessProxy(t, cfg)
	r := &relay{master: m, proxy: tp}
	r.replicas = append(r.replicas, redisproc.Start(t, "--masterauth", "proxy-secret", "--replicaof", "127.0.0.1", strconv.Itoa(tp.port)))
	stopLoad := runLoad(t, m, 104)
	r.waitInSyncWhileLoading(t)

	type result struct {
		sent  int64
		reply string
		err   error
	}
	results := make(chan result, 4)
	for i := 0; i < 4; i++ {
		go func() {
			sent, reply, err := floodCommand(cfg.Listen, i%2 == 0)
			results <- result{sent, reply, err}
		}()
	}
	var all []result
	for i := 0; i < 4; i++ {
		all = append(all, <-results)
	}
	if peak := peakRSS(t, tp.cmd.Process.Pid); peak > 64<<20 {
		t.Fatalf("the proxy's peak RSS was %d MiB", peak>>20)
	} else {
		t.Logf("peak RSS %d MiB", peak>>20)
	}
	for _, res := range all {
		if res.err != nil {
			t.Fatalf("flooding client: %v after %d bytes", res.err, res.sent)
		}
		// The socket buffers hold a few MB; the proxy itself took ~nothing.
		if res.sent > 64<<20 {
			t.Fatalf("an unauthenticated client sent %d MB before it was closed", res.sent>>20)
		}
		if res.reply != "" && !strings.HasPrefix(res.reply, "-ERR Protocol error: unauthenticated") {
			t.Fatalf("reply %q", res.reply)
		}
	}
	waitOps(t, m, 1000)
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "proxy connected_slaves", tp.infoInt("replication", "connected_slaves"), 1)
}

// dialIdle opens n connections that send nothing, a few at a time.
func dialIdle(addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		go func() {
			for i := w; i < n; i += 8 {
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
					return
				}
				conns[i] = c
			}
			errs <- nil
		}()
	}
	var first error
	for w := 0; w < 8; w++ {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return conns, first
}

// Issue 10, point 4: with a password, 10 000 idle unauthenticated
// connections fill the proxy up to maxclients: one more gets Redis' "max
// number of clients reached". At the AUTH deadline (the default, 10s) the
// idle ones are closed, and so is a client that sends one byte a second;
// then clients are served again, and replication never stopped.
func TestMaxClientsAndAuthDeadline(t *testing.T) {
	t.Parallel()
	const idleConns = 10000
	m := redisproc.Start(t, masterArgs...)
	cfg := proxyConfig(t, m.Addr())
	cfg.RequirePass = "proxy-secret"
	if cfg.MaxClients != 10000 || cfg.AuthTimeout != proxy.Duration(10*time.Second) {
		t.Fatalf("defaults: maxclients %d, auth_timeout %s", cfg.MaxClients, time.Duration(cfg.AuthTimeout))
	}
	// Room for the idle ones besides the replica, an operator and the slow client.
	cfg.MaxClients = idleConns + 3
	tp := newProcessProxy(t, cfg)
	r := &relay{master: m, proxy: tp}
	r.replicas = append(r.replicas, redisproc.Start(t, "--masterauth", "proxy-secret", "--replicaof", "127.0.0.1", strconv.Itoa(tp.port)))
	stopLoad := runLoad(t, m, 105)
	r.waitInSyncWhileLoading(t)
	admin, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if got, err := admin.do("AUTH", "proxy-secret"); got != "+OK" {
		t.Fatalf("AUTH: %q %v", got, err)
	}
	// waitClients waits for the proxy to have accepted n connections: a
	// burst overflows the kernel's accept queue, which then completes
	// handshakes out of order, seconds late.
	waitClients := func(n int) {
		redisproc.Eventually(t, 10*time.Second, "the proxy to accept the connections", func() (bool, string) {
			got, err := admin.do("INFO", "clients")
			return strings.Contains(got, "connected_clients:"+strconv.Itoa(n)+"\r\n"), fmt.Sprint(got, err)
		})
	}

	// One byte a second: each would reset an idle timeout.
	slow, err := net.Dial("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	waitClients(3)
	slowStart := time.Now()
	slowClosed := make(chan time.Duration, 1)
	go func() {
		cmd := []byte("*2\r\n$4\r\nAUTH\r\n$12\r\nproxy-secret\r\n")
		for i := 0; ; i++ {
			if _, err := slow.Write(cmd[i%len(cmd) : i%len(cmd)+1]); err != nil {
				break
			}
			time.Sleep(time.Second)
		}
		slowClosed <- time.Since(slowStart)
	}()

	start := time.Now()
	var idle []net.Conn
	t.Cleanup(func() {
		for _, c := range idle {
			if c != nil {
				c.Close()
			}
		}
	})
	for len(idle) < idleConns {
		batch, err := dialIdle(cfg.Listen, min(1000, idleConns-len(idle)))
		idle = append(idle, batch...)
		if err != nil {
			t.Fatal(err)
		}
		waitClients(3 + len(idle))
	}
	t.Logf("%d idle connections in %s", len(idle), time.Since(start))
	extra, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := readReply(extra.br); got != "-ERR max number of clients reached" {
		t.Fatalf("connection %d: %q %v", idleConns+4, got, err)
	}

	select {
	case d := <-slowClosed:
		if d < 9*time.Second {
			t.Fatalf("the slow client was closed after %s, before the deadline", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a client sending one byte a second was not closed at the AUTH deadline")
	}
	for i, c := range idle {
		expectClosed(t, c, 10*time.Second, fmt.Sprintf("idle connection %d", i))
	}
	w, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, args := range [][]string{{"AUTH", "proxy-secret"}, {"PING"}} {
		if got, err := w.do(args...); !strings.HasPrefix(got, "+") {
			t.Fatalf("%v after the deadline: %q %v", args, got, err)
		}
	}
	expectInt(t, "auth_timeouts", tp.infoInt("stats", "auth_timeouts"), idleConns+1)
	expectInt(t, "rejected_connections", tp.infoInt("stats", "rejected_connections"), 1)
	waitOps(t, m, 1000)
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "proxy connected_slaves", tp.infoInt("replication", "connected_slaves"), 1)
}

// Issue 10: AUTH failures are logged at most once a second, with a count;
// a MULTI queue is capped, and EXEC then aborts the transaction.
func TestAuthFailureLogAndMultiCap(t *testing.T) {
	t.Parallel()
	m := redisproc.Start(t)
	cfg := proxyConfig(t, m.Addr())
	cfg.RequirePass = "proxy-secret"
	tp := startProxy(t, cfg)
	w, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	const guesses = 300
	var raw []byte
	for i := 0; i < guesses; i++ {
		raw = resp.AppendCommand(raw, "AUTH", fmt.Sprintf("guess-%d", i))
	}
	start := time.Now()
	w.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := w.Write(raw); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < guesses; i++ {
		if got, err := readReply(w.br); !strings.HasPrefix(got, "-WRONGPASS") {
			t.Fatalf("guess %d: %q %v", i, got, err)
		}
	}
	elapsed := time.Since(start)
	expectInt(t, "acl_access_denied_auth", tp.infoInt("stats", "acl_access_denied_auth"), guesses)
	logged := strings.Count(tail(tp.logPath, 1000), `"AUTH failed`)
	if limit := int(elapsed/time.Second) + 2; logged < 1 || logged > limit {
		t.Fatalf("%d AUTH failure lines for %d failures in %s", logged, guesses, elapsed)
	}

	if got, err := w.do("AUTH", "proxy-secret"); got != "+OK" {
		t.Fatalf("AUTH: %q %v", got, err)
	}
	// By count: 1000 commands queue, the next one is refused.
	raw = resp.AppendCommand(nil, "MULTI")
	for i := 0; i < 1001; i++ {
		raw = resp.AppendCommand(raw, "PING")
	}
	raw = resp.AppendCommand(raw, "EXEC")
	if _, err := w.Write(raw); err != nil {
		t.Fatal(err)
	}
	want := append(append([]string{"+OK"}, repeat("+QUEUED", 1000)...),
		"-ERR MULTI queue limit reached", "-EXECABORT Transaction discarded because of previous errors.")
	for i, prefix := range want {
		if got, err := readReply(w.br); !strings.HasPrefix(got, prefix) {
			t.Fatalf("reply %d: %q %v, want %q", i, got, err, prefix)
		}
	}
	// By size: three arguments of 400 KB pass 1 MiB.
	big := strings.Repeat("x", 400<<10)
	for i, step := range []struct{ args []string }{{[]string{"MULTI"}}, {[]string{"ECHO", big}}, {[]string{"ECHO", big}}, {[]string{"ECHO", big}}, {[]string{"EXEC"}}} {
		got, err := w.do(step.args...)
		if prefix := []string{"+OK", "+QUEUED", "+QUEUED", "-ERR MULTI queue limit", "-EXECABORT"}[i]; !strings.HasPrefix(got, prefix) {
			t.Fatalf("step %d: %.40q %v, want %q", i, got, err, prefix)
		}
	}
	// The client is in a clean state afterwards.
	if got, err := w.do("PING"); got != "+PONG" {
		t.Fatalf("PING after EXECABORT: %q %v", got, err)
	}
}

func repeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}
