package fanout

import (
	"bufio"
	"crypto/sha256"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// startAuthServer serves on loopback with a password and returns its address.
func startAuthServer(t *testing.T, cfg Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store = openTestStore(t)
	cfg.Logger = zerolog.Nop()
	if cfg.Users == nil {
		cfg.Users = []User{{DefaultUser, sha256.Sum256([]byte("pw")), RoleAdmin}}
	}
	serveOn(t, newTestServer(cfg), ln)
	return ln.Addr().String()
}

// sendLines writes lines and returns every reply line until the server
// closes the connection (or 5 s pass).
func sendLines(t *testing.T, addr string, lines ...string) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	go c.Write([]byte(strings.Join(lines, "")))
	var out []string
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			out = append(out, strings.TrimSpace(line))
		}
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("no close after %q: %v", out, err)
		}
	}
}

// Issue 23, point 5: inline commands obey the argument limit, before AUTH
// (10) and after (1024): a protocol error and a close, not "wrong number
// of arguments" with the connection kept.
func TestInlineCommandsObeyTheArgumentLimit(t *testing.T) {
	addr := startAuthServer(t, Config{})
	got := sendLines(t, addr, "AUTH"+strings.Repeat(" x", 10)+"\r\n", "PING\r\n")
	if len(got) != 1 || got[0] != "-ERR Protocol error: unauthenticated inline request: too many arguments" {
		t.Fatalf("11 inline arguments before AUTH: %q", got)
	}
	got = sendLines(t, addr, "AUTH pw\r\n", "ECHO"+strings.Repeat(" x", 1024)+"\r\n", "PING\r\n")
	if len(got) != 2 || got[0] != "+OK" || got[1] != "-ERR Protocol error: too many arguments in inline request" {
		t.Fatalf("1025 inline arguments after AUTH: %q", got)
	}
	// At the limits, commands are served.
	got = sendLines(t, addr, "AUTH a b c d e f g h i\r\n", "AUTH pw\r\n", "QUIT\r\n")
	if len(got) != 3 || !strings.HasPrefix(got[0], "-ERR wrong number") || got[1] != "+OK" || got[2] != "+OK" {
		t.Fatalf("10 inline arguments: %q", got)
	}
}

// Issue 23, point 9: subscribers that stop reading never hold a PUBLISH
// for more than the promised second (plus scheduling): eight stalled
// subscribers used to cost a second each, in turn.
func TestStalledSubscribersDoNotHoldPublish(t *testing.T) {
	hash := func(s string) [32]byte { return sha256.Sum256([]byte(s)) }
	addr := startAuthServer(t, Config{Users: []User{
		{DefaultUser, hash("pw"), RoleAdmin},
		{"mon", hash("mon-pw"), RoleMonitor},
	}})
	small := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return nil
	}}
	for i := 0; i < 8; i++ {
		c, err := small.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("AUTH mon mon-pw\r\nSUBSCRIBE " + HelloChannel + "\r\n"))
		// Read the two replies, then never again.
		br := bufio.NewReader(c)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if line, err := br.ReadString('\n'); err != nil || line != "+OK\r\n" {
			t.Fatalf("subscriber %d AUTH: %q %v", i, line, err)
		}
		for j := 0; j < 4; j++ { // *3, $9 subscribe, $18 channel, :1
			if _, err := br.ReadString('\n'); err != nil {
				t.Fatal(err)
			}
		}
	}
	pub, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	br := bufio.NewReader(pub)
	pub.Write([]byte("AUTH pw\r\n"))
	if line, _ := br.ReadString('\n'); line != "+OK\r\n" {
		t.Fatalf("AUTH: %q", line)
	}
	msg := strings.Repeat("h", 400<<10)
	cmd := []byte("*3\r\n$7\r\nPUBLISH\r\n$" + strconv.Itoa(len(HelloChannel)) + "\r\n" + HelloChannel + "\r\n$" + strconv.Itoa(len(msg)) + "\r\n" + msg + "\r\n")
	var slowest time.Duration
	// Enough to fill the kernel's buffers (several MB on loopback) and
	// stall every subscriber.
	for i := 0; i < 40; i++ {
		start := time.Now()
		pub.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := pub.Write(cmd); err != nil {
			t.Fatal(err)
		}
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, ":") {
			t.Fatalf("PUBLISH %d: %q %v", i, line, err)
		}
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("slowest PUBLISH beside 8 stalled subscribers: %s", slowest.Round(time.Millisecond))
	if slowest < pushTimeout/2 {
		t.Fatalf("no PUBLISH waited (slowest %s): the subscribers never stalled, and the test shows nothing", slowest)
	}
	if slowest > 3*time.Second {
		t.Fatalf("a PUBLISH took %s beside 8 stalled subscribers; the promise is a second", slowest)
	}
}

// Issue 23, point 1: past the budget, the largest unauthenticated clients
// are closed first, until the rest fit; the small ones stay.
func TestUnauthBudgetClosesTheLargestFirst(t *testing.T) {
	s := newTestServer(Config{Store: openTestStore(t), Logger: zerolog.Nop(), UnauthMaxMemory: 1000})
	clients := make([]*client, 5)
	for i := range clients {
		a, b := net.Pipe()
		defer b.Close()
		clients[i] = &client{srv: s, conn: a}
	}
	for i, n := range []int{400, 300, 100, 50} {
		if err := s.chargeUnauth(clients[i], n); err != nil {
			t.Fatalf("client %d within budget: %v", i, err)
		}
	}
	// 850 + 500 > 1000: the 500 itself is now the largest and goes first.
	if err := s.chargeUnauth(clients[4], 500); err != errEvicted {
		t.Fatalf("the largest, asking: %v", err)
	}
	// 50 grows to 350, 1150 > 1000: the 400 goes, and 750 fit.
	if err := s.chargeUnauth(clients[3], 350); err != nil {
		t.Fatalf("growing a small client: %v", err)
	}
	if !clients[0].evicted || clients[1].evicted || clients[2].evicted || clients[3].evicted {
		t.Fatalf("evicted: %v %v %v %v", clients[0].evicted, clients[1].evicted, clients[2].evicted, clients[3].evicted)
	}
	if _, err := clients[0].conn.Write([]byte("x")); err == nil {
		t.Fatal("the evicted client's connection is open")
	}
	if err := s.chargeUnauth(clients[0], 10); err != errEvicted {
		t.Fatalf("an evicted client grows again: %v", err)
	}
	if got := s.stats.EvictedClients.Load(); got != 2 {
		t.Fatalf("evicted_clients %d, want 2", got)
	}
	s.releaseUnauth(clients[1])
	if s.unauth.total != 450 {
		t.Fatalf("total %d after a release, want 450", s.unauth.total)
	}
}

// The unauthenticated budget's total returns to 0 however its clients
// end: EOF inside a command, a protocol error, the AUTH deadline, an
// eviction, AUTH after a buffer past what is kept, QUIT, and a buffer
// released between commands and grown again.
func TestUnauthBudgetReturnsToZero(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newTestServer(Config{Store: openTestStore(t), Logger: zerolog.Nop(), UnauthMaxMemory: 1 << 20,
		AuthTimeout: 3 * time.Second, Users: []User{{DefaultUser, sha256.Sum256([]byte("pw")), RoleAdmin}}})
	serveOn(t, s, ln)
	addr := ln.Addr().String()
	bulk := func(n int) string { return "$" + strconv.Itoa(n) + "\r\n" + strings.Repeat("v", n) + "\r\n" }
	partial := "*10\r\n" + bulk(16<<10) + bulk(16<<10) + bulk(16<<10) + "$16384\r\n" + strings.Repeat("w", 8<<10)
	full := "*10\r\n" + strings.Repeat(bulk(16<<10), 10)
	var conns []net.Conn
	open := func(data string) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		go c.Write([]byte(data))
		conns = append(conns, c)
		return c
	}
	eof := open(partial)
	open(partial + "x\r\n")                     // a protocol error: bulk not terminated by CRLF
	open(partial)                               // left to the AUTH deadline
	authed := open(full + "AUTH pw\r\n")        // buffer past retainCap, then AUTH
	open(full + "QUIT\r\n")                     // QUIT after a released buffer
	regrow := open(full + "PING\r\n" + partial) // released, grown again, then closed
	for range 40 {                              // 40 × about 72 KiB: evictions
		open(partial)
	}
	time.Sleep(time.Second) // let the reads arrive; the totals are checked after all end
	eof.Close()
	authed.Close()
	regrow.Close()
	if s.stats.EvictedClients.Load() == 0 {
		t.Error("no client was evicted: the test does not cover evictions")
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		s.conns.mu.Lock()
		open := len(s.conns.byID)
		s.conns.mu.Unlock()
		s.unauth.mu.Lock()
		total, held := s.unauth.total, len(s.unauth.held)
		s.unauth.mu.Unlock()
		if open == 0 {
			if total != 0 || held != 0 {
				t.Fatalf("all clients gone, but the budget holds %d bytes for %d clients", total, held)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d clients still open (budget %d bytes for %d clients)", open, total, held)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
