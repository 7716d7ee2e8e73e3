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

// The feed's port can be found by any local user (/proc/net/tcp) in the
// second before the temporary server connects. One who connects first and
// says nothing, with a second connection that sends only PING, must not
// hold the replica's handshake: before, handshakes ran one at a time, so
// the replica waited the stranger's 30 s deadline and the restore failed.
func TestSilentStrangerDoesNotHoldTheFeed(t *testing.T) {
	f, err := newFeed()
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	accepted := make(chan error, 1)
	go func() { accepted <- f.accept(ctx, strings.Repeat("b", 40), 7) }()
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", f.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// Well within the handshake's 30 s: the replica must not wait
		// for the strangers' deadline.
		c.SetDeadline(time.Now().Add(10 * time.Second))
		return c, bufio.NewReader(c)
	}
	silent, _ := dial()
	_ = silent
	pinger, pbr := dial()
	pinger.Write([]byte("PING\r\n"))
	if l, err := pbr.ReadString('\n'); err != nil || strings.TrimSpace(l) != "-NOAUTH Authentication required." {
		t.Fatalf("stranger's PING: %q %v", l, err)
	}
	replica, rbr := dial()
	var got []string
	for _, l := range []string{"PING", "AUTH " + f.password, "REPLCONF capa psync2", "PSYNC ? -1"} {
		replica.Write([]byte(l + "\r\n"))
		reply, err := rbr.ReadString('\n')
		if err != nil {
			t.Fatalf("the replica's %q got no answer while strangers hold connections: %v", strings.Fields(l)[0], err)
		}
		got = append(got, strings.TrimSpace(reply))
	}
	if strings.Join(got, "|") != "-NOAUTH Authentication required.|+OK|+OK|+FULLRESYNC "+strings.Repeat("b", 40)+" 7" {
		t.Fatalf("the replica got %q", got)
	}
	if err := <-accepted; err != nil {
		t.Fatalf("accept: %v", err)
	}
	// The strangers' connections are closed once the replica won.
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := silent.Read(make([]byte, 1)); err == nil {
		t.Fatalf("the silent stranger read %d bytes and is still connected", n)
	}
	if err := f.write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := f.flush(); err != nil {
		t.Fatal(err)
	}
	if l, err := rbr.ReadString('\n'); err != nil || l != "*1\r\n" {
		t.Fatalf("the replica's stream: %q %v", l, err)
	}
}
