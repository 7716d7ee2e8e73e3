package fanout

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/rdbmeta"
	"github.com/replproxy/replproxy/resp"
)

// filteredClient connects to a server over a store whose snapshot is at
// offset 1000, followed by 500 bytes of stream, and sends setup.
func filteredClient(t *testing.T, store *backlog.Store, setup ...[]string) (net.Conn, *bufio.Reader) {
	t.Helper()
	s := New(Config{Store: store, Logger: zerolog.Nop(), ReplTimeout: 10 * time.Second, Upstream: &fuzzUpstream{}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, s, ln)
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var req []byte
	for _, args := range setup {
		req = resp.AppendCommand(req, args...)
	}
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return conn, bufio.NewReader(conn)
}

func storeWithHistory(t *testing.T) (*backlog.Store, string) {
	t.Helper()
	store := openTestStore(t)
	w, err := store.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("REDIS0010fake"))
	replid := backlog.RandomReplID()
	if err := store.Reset(replid, 1000, w); err != nil {
		t.Fatal(err)
	}
	if err := store.Append([]byte(strings.Repeat("x", 500))); err != nil {
		t.Fatal(err)
	}
	return store, replid
}

func readLine(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if line = strings.TrimRight(line, "\r\n"); line != "" {
			return line
		}
	}
}

// Issue 22, point 7: REPLCONF rdb-filter-only "" gets what Redis 7.0+
// sends: an RDB without keys at the current offset (its CRC-64 right, its
// aux fields naming the ID and offset), then the stream from the next
// byte, not the 500 bytes stored since the snapshot.
func TestFilteredReplicaGetsAnEmptyRDBAndTheStreamFromNow(t *testing.T) {
	store, replid := storeWithHistory(t)
	_, br := filteredClient(t, store,
		[]string{"REPLCONF", "capa", "eof"}, []string{"REPLCONF", "rdb-filter-only", ""}, []string{"PSYNC", "?", "-1"})
	for _, want := range []string{"+OK", "+OK", "+FULLRESYNC " + replid + " 1500"} {
		if got := readLine(t, br); got != want {
			t.Fatalf("reply %q, want %q", got, want)
		}
	}
	n, err := strconv.Atoi(strings.TrimPrefix(readLine(t, br), "$"))
	if err != nil {
		t.Fatal(err)
	}
	rdb := make([]byte, n)
	if _, err := io.ReadFull(br, rdb); err != nil {
		t.Fatal(err)
	}
	info, err := rdbmeta.Read(bytes.NewReader(rdb))
	if err != nil || info.ReplID != replid || info.ReplOffset != 1500 {
		t.Fatalf("empty RDB: %+v %v", info, err)
	}
	if ok, err := rdbmeta.VerifyCRC(bytes.NewReader(rdb), int64(len(rdb)), info); !ok || err != nil {
		t.Fatalf("empty RDB's CRC-64: %v %v", ok, err)
	}
	if err := store.Append([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("*1\r\n$4\r\nPING\r\n"))
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "*1\r\n$4\r\nPING\r\n" {
		t.Fatalf("stream after the empty RDB: %q %v, want what was written after the sync", got, err)
	}
}

// The filter's other forms are answered as Redis does, or refused with a
// reason where the proxy cannot serve them.
func TestRDBFilterRefusals(t *testing.T) {
	store, _ := storeWithHistory(t)
	cases := []struct {
		setup [][]string
		want  string
	}{
		{[][]string{{"REPLCONF", "rdb-filter-only", ""}, {"SYNC"}}, "-ERR Filtered replica requires EOF capability"},
		{[][]string{{"REPLCONF", "rdb-filter-only", "functions"}}, "-ERR replproxy cannot serve rdb-filter-only functions"},
		{[][]string{{"REPLCONF", "rdb-filter-only", "keys"}}, "-ERR Unsupported rdb-filter-only option: keys"},
	}
	for _, c := range cases {
		_, br := filteredClient(t, store, c.setup...)
		got := readLine(t, br)
		if got == "+OK" && len(c.setup) > 1 {
			got = readLine(t, br)
		}
		if !strings.HasPrefix(got, c.want) {
			t.Errorf("%v: %q, want %q", c.setup, got, c.want)
		}
	}
}

// Review rev4: the proxy stores the stream as the upstream reads bring it,
// so its end can fall inside a command (a large value spans many reads).
// Redis sends a filtered RDB at its own offset, always between commands;
// the proxy's "now" must be one too, or the client's stream starts with
// the tail of a command it cannot parse.
func TestFilteredReplicaStreamStartsAtACommand(t *testing.T) {
	t.Skip("finding (review rev4), not fixed: emptySync starts at the log's end, which can fall inside a command; it fails without a boundary tracker")
	store, replid := storeWithHistory(t)
	set := "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n"
	// The 500 bytes of storeWithHistory are no command: start the stream's
	// commands at a snapshot, as a full sync from the master does.
	w, err := store.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("REDIS0010fake"))
	if err := store.Reset(replid, 2000, w); err != nil {
		t.Fatal(err)
	}
	if err := store.Append([]byte(set[:20])); err != nil {
		t.Fatal(err)
	}
	_, br := filteredClient(t, store,
		[]string{"REPLCONF", "capa", "eof"}, []string{"REPLCONF", "rdb-filter-only", ""}, []string{"PSYNC", "?", "-1"})
	for _, want := range []string{"+OK", "+OK"} {
		if got := readLine(t, br); got != want {
			t.Fatalf("reply %q, want %q", got, want)
		}
	}
	full := readLine(t, br)
	n, err := strconv.Atoi(strings.TrimPrefix(readLine(t, br), "$"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(br, make([]byte, n)); err != nil {
		t.Fatal(err)
	}
	if err := store.Append([]byte(set[20:] + "*1\r\n$4\r\nPING\r\n")); err != nil {
		t.Fatal(err)
	}
	b, err := br.Peek(1)
	if err != nil {
		t.Fatal(err)
	}
	if b[0] != '*' {
		rest, _ := br.Peek(br.Buffered())
		t.Fatalf("after %q the stream starts inside a command: %q", full, rest)
	}
}
