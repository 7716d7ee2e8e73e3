package fanout

import (
	"bufio"
	"crypto/sha256"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/resp"
)

// COMMAND COUNT counts only what dispatch answers: each listed command,
// sent alone on a fresh connection, is known (it may want arguments).
func TestKnownCommandsAreDispatched(t *testing.T) {
	store, _ := storeWithHistory(t)
	for _, name := range knownCommands {
		if name == "psync" || name == "sync" {
			continue // would turn the connection into a replica
		}
		_, br := filteredClient(t, store, []string{strings.ToUpper(name)})
		if got := readLine(t, br); strings.HasPrefix(got, "-ERR unknown command") {
			t.Errorf("%s is counted by COMMAND COUNT but unknown: %q", name, got)
		}
	}
}

// CLIENT LIST shows every connection's address and user: only an admin
// may read it. A monitor (Sentinel without failover rights) is refused.
func TestClientListIsForAdmins(t *testing.T) {
	store, _ := storeWithHistory(t)
	s := newTestServer(Config{Store: store, Logger: zerolog.Nop(), Upstream: &fuzzUpstream{},
		Users: []User{{"mon", sha256.Sum256([]byte("pw")), RoleMonitor}}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, s, ln)
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var req []byte
	req = resp.AppendCommand(req, "AUTH", "mon", "pw")
	req = resp.AppendCommand(req, "CLIENT", "LIST")
	conn.Write(req)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	if got := readLine(t, br); got != "+OK" {
		t.Fatalf("AUTH: %q", got)
	}
	if got := readLine(t, br); !strings.HasPrefix(got, "-NOPERM") {
		t.Fatalf("CLIENT LIST as a monitor: %q, want -NOPERM", got)
	}
}
