package restore

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// The feed's port is on loopback for any local user: without the password
// a connection gets no data, and it does not keep the real replica out.
func TestFeedServesOnlyWithThePassword(t *testing.T) {
	f, err := newFeed()
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	accepted := make(chan error, 1)
	go func() { accepted <- f.accept(ctx, strings.Repeat("a", 40), 42) }()

	talk := func(lines ...string) []string {
		t.Helper()
		c, err := net.Dial("tcp", f.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		var got []string
		for _, l := range lines {
			c.Write([]byte(l + "\r\n"))
			reply, err := br.ReadString('\n')
			if err != nil {
				got = append(got, "closed")
				break
			}
			got = append(got, strings.TrimSpace(reply))
		}
		return got
	}
	if got := talk("PING", "PSYNC ? -1", "AUTH "+f.password); strings.Join(got, "|") != "-NOAUTH Authentication required.|-NOAUTH Authentication required.|closed" {
		t.Fatalf("a stranger got %q", got)
	}
	if got := talk("AUTH nope", "AUTH "+f.password); strings.Join(got, "|") != "-WRONGPASS invalid username-password pair|closed" {
		t.Fatalf("a stranger got %q", got)
	}
	if got := talk("AUTH "+f.password, "GET k"); strings.Join(got, "|") != "+OK|-ERR only a replica's handshake is served here|closed" && strings.Join(got, "|") != "+OK|-ERR only a replica's handshake is served here" {
		t.Fatalf("an authenticated non-replica got %q", got)
	}
	if got := talk("PING", "AUTH "+f.password, "REPLCONF capa psync2", "PSYNC ? -1"); strings.Join(got, "|") != "-NOAUTH Authentication required.|+OK|+OK|+FULLRESYNC "+strings.Repeat("a", 40)+" 42" {
		t.Fatalf("the replica got %q", got)
	}
	if err := <-accepted; err != nil {
		t.Fatalf("accept: %v", err)
	}
}
