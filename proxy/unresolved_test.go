package proxy_test

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/proxy"
)

// Issue 27 review, secure defaults: New used to take a Config and derive
// its users (requirepass, users[]) itself. It now takes a Resolved, whose
// users only Resolve fills in; a Resolved built by hand around a Config
// (proxy.Resolved{Config: cfg}, which compiles) would run with no users,
// every client the unrestricted default user, requirepass set or not.
// New and NewGroup refuse it.
func TestUnresolvedConfigRefused(t *testing.T) {
	m := redisproc.Start(t)
	cfg := proxyConfig(t, m.Addr())
	cfg.RequirePass = "unresolved-secret-3391"
	p, err := proxy.New(proxy.Resolved{Config: cfg}, zerolog.Nop(), "test")
	if err == nil {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		reply := pingWithoutAuth(t, cfg.Listen)
		cancel()
		<-done
		t.Fatalf("New took a Resolved not made by Resolve; with requirepass set, PING without AUTH got %q", reply)
	}
	if !strings.Contains(err.Error(), "Resolve") {
		t.Errorf("error %q does not say to use Config.Resolve", err)
	}
	if _, err := proxy.NewGroup(proxy.Resolved{Config: cfg}, zerolog.Nop(), "test"); err == nil {
		t.Fatal("NewGroup took a Resolved not made by Resolve")
	}
	// Resolve's output is taken, and asks for the password.
	r, err := cfg.Resolve()
	if err != nil {
		t.Fatal(err)
	}
	p, err = proxy.New(r, zerolog.Nop(), "test")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if reply := pingWithoutAuth(t, cfg.Listen); !strings.HasPrefix(reply, "-NOAUTH") {
		t.Fatalf("PING without AUTH: %q, want -NOAUTH", reply)
	}
}

func pingWithoutAuth(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte("PING\r\n"))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("PING: %v", err)
	}
	return strings.TrimSpace(line)
}
