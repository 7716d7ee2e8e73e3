package fanout

import (
	"bufio"
	"crypto/sha256"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/resp"
)

// CLIENT LIST is one line per connection, which tools split on newlines
// and blanks. Nothing another client sends may add a line or a field: not
// the command name of a client that never authenticated (it is shown as
// cmd=), nor the name a monitor sets. Before the fix, an unauthenticated
// client's command "x\nid=999 addr=6.6.6.6:1 flags=S" and a monitor's
// CLIENT SETNAME with a newline both showed up as forged replica lines;
// and the shown name of a 16 KiB unknown command was kept whole per
// client, outside the unauthenticated clients' buffer budget.
func TestClientListLinesCannotBeForged(t *testing.T) {
	store, _ := storeWithHistory(t)
	s := newTestServer(Config{Store: store, Logger: zerolog.Nop(), Upstream: &fuzzUpstream{},
		Users: []User{
			{"adm", sha256.Sum256([]byte("apw")), RoleAdmin},
			{"mon", sha256.Sum256([]byte("mpw")), RoleMonitor},
		}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, s, ln)
	dial := func() (net.Conn, *bufio.Reader) {
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		return conn, bufio.NewReader(conn)
	}
	forged := "x\nid=999 addr=6.6.6.6:1 laddr=6.6.6.6:2 name= age=0 idle=0 flags=S cmd=psync user=adm"

	stranger, sbr := dial()
	stranger.Write(resp.AppendCommand(nil, forged))
	if got := readLine(t, sbr); !strings.HasPrefix(got, "-NOAUTH") {
		t.Fatalf("forged command before AUTH: %q", got)
	}
	big, bbr := dial()
	big.Write(resp.AppendCommand(nil, strings.Repeat("y", 16<<10)))
	if got := readLine(t, bbr); !strings.HasPrefix(got, "-NOAUTH") {
		t.Fatalf("16 KiB command before AUTH: %q", got)
	}
	sub, ubr := dial()
	sub.Write(resp.AppendCommand(nil, "CLIENT", strings.Repeat("z", 16<<10)))
	if got := readLine(t, ubr); !strings.HasPrefix(got, "-NOAUTH") {
		t.Fatalf("16 KiB subcommand before AUTH: %q", got)
	}

	mon, mbr := dial()
	var req []byte
	req = resp.AppendCommand(req, "AUTH", "mon", "mpw")
	req = resp.AppendCommand(req, "CLIENT", "SETNAME", forged)
	req = resp.AppendCommand(req, "CLIENT", "SETNAME", "a name")
	req = resp.AppendCommand(req, "CLIENT", "SETNAME", "sentinel-1")
	req = resp.AppendCommand(req, "PING") // CLIENT LIST shows the name as of the last command
	mon.Write(req)
	if got := readLine(t, mbr); got != "+OK" {
		t.Fatalf("AUTH mon: %q", got)
	}
	for _, name := range []string{"with a newline", "with a blank"} {
		if got := readLine(t, mbr); !strings.HasPrefix(got, "-ERR Client names cannot contain spaces, newlines or special characters") {
			t.Errorf("CLIENT SETNAME %s: %q, want Redis' refusal", name, got)
		}
	}
	if got := readLine(t, mbr); got != "+OK" {
		t.Fatalf("CLIENT SETNAME sentinel-1: %q", got)
	}
	if got := readLine(t, mbr); got != "+PONG" {
		t.Fatalf("PING: %q", got)
	}

	adm, abr := dial()
	req = resp.AppendCommand(nil, "AUTH", "adm", "apw")
	req = resp.AppendCommand(req, "CLIENT", "LIST")
	adm.Write(req)
	if got := readLine(t, abr); got != "+OK" {
		t.Fatalf("AUTH adm: %q", got)
	}
	hdr := readLine(t, abr)
	n, err := strconv.Atoi(strings.TrimPrefix(hdr, "$"))
	if err != nil {
		t.Fatalf("CLIENT LIST: %q", hdr)
	}
	body := make([]byte, n+2)
	if _, err := io.ReadFull(abr, body); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(body[:n]), "\n"), "\n")
	if len(lines) != 5 {
		t.Errorf("CLIENT LIST has %d lines for 5 connections:\n%s", len(lines), body)
	}
	for _, l := range lines {
		if strings.Contains(l, "6.6.6.6") || !strings.HasPrefix(l, "id=") {
			t.Errorf("forged CLIENT LIST line: %q", l)
		}
		if len(l) > 512 {
			t.Errorf("CLIENT LIST line of %d bytes: a client's command name is kept whole", len(l))
		}
	}
	if !strings.Contains(string(body), "name=sentinel-1 ") {
		t.Errorf("the monitor's valid name is missing:\n%s", body)
	}
}
