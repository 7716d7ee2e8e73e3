package fanout

import (
	"bufio"
	"crypto/sha256"
	"io"
	"net"
	"strings"
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
	serveOn(t, New(cfg), ln)
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
