package fanout

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/rdbmeta"
	"github.com/replproxy/replproxy/resp"
)

// filteredClient connects to a server over a store and sends setup.
func filteredClient(t *testing.T, store *backlog.Store, setup ...[]string) (net.Conn, *bufio.Reader) {
	t.Helper()
	s := newTestServer(Config{Store: store, Logger: zerolog.Nop(), ReplTimeout: 10 * time.Second, Upstream: &fuzzUpstream{}})
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

// storeWithHistory is a store whose snapshot is at offset 1000, followed by
// 500 bytes of stream.
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
	// 500 bytes of stream: one SET of a 472-byte value.
	if err := store.Append(resp.AppendCommand(nil, "SET", "k", strings.Repeat("x", 472))); err != nil {
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
// so its end can fall inside a command (a large value spans many reads) or
// inside a MULTI ... EXEC block. Redis sends a filtered RDB at its own
// offset, always between them, with the stream's database in the RDB's
// repl-stream-db; the proxy's "now" must be such a boundary too, or the
// client's stream starts with the tail of a command, or an EXEC without
// its MULTI.
func TestFilteredReplicaStreamStartsAtACommand(t *testing.T) {
	cmd := func(args ...string) string { return string(resp.AppendCommand(nil, args...)) }
	set, sel := cmd("SET", "k", "value"), cmd("SELECT", "3")
	multi, exec := cmd("MULTI"), cmd("EXEC")
	for _, tc := range []struct {
		name, stored, later string
		offset, db          int64 // of the empty RDB
		stream              string
	}{
		{"inside a command", set[:20], set[20:], 1500, 0, set},
		{"inside a transaction", sel + multi + set, exec, 1500 + int64(len(sel)), 3, multi + set + exec},
		{"after a transaction", sel + multi + set + exec + set[:3], set[3:], 1500 + int64(len(sel+multi+set+exec)), 3, set},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store, replid := storeWithHistory(t)
			if err := store.Append([]byte(tc.stored)); err != nil {
				t.Fatal(err)
			}
			_, br := filteredClient(t, store,
				[]string{"REPLCONF", "capa", "eof"}, []string{"REPLCONF", "rdb-filter-only", ""}, []string{"PSYNC", "?", "-1"})
			for _, want := range []string{"+OK", "+OK", "+FULLRESYNC " + replid + " " + strconv.FormatInt(tc.offset, 10)} {
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
			if err != nil || info.ReplOffset != tc.offset || info.ReplStreamDB != tc.db {
				t.Fatalf("empty RDB: %+v %v, want offset %d db %d", info, err, tc.offset, tc.db)
			}
			ping := cmd("PING")
			if err := store.Append([]byte(tc.later + ping)); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(tc.stream+ping))
			if _, err := io.ReadFull(br, got); err != nil || string(got) != tc.stream+ping {
				t.Fatalf("stream after the empty RDB: %q %v, want %q", got, err, tc.stream+ping)
			}
		})
	}
}

// The empty RDB, with the stream's database among its aux fields, is one
// a real redis-server loads: no keys, and the replication offset it names.
func TestEmptyRDBLoadsInRedis(t *testing.T) {
	dir := t.TempDir()
	replid := backlog.RandomReplID()
	if err := os.WriteFile(filepath.Join(dir, "dump.rdb"), emptyRDB(replid, 123456, 3), 0o600); err != nil {
		t.Fatal(err)
	}
	s := redisproc.Start(t, "--dir", dir, "--dbfilename", "dump.rdb")
	if n, err := s.Do("DBSIZE"); err != nil || fmt.Sprint(n) != "0" {
		t.Fatalf("DBSIZE %v %v, want 0", n, err)
	}
	if got := s.InfoInt("replication", "master_repl_offset"); got != 123456 {
		t.Fatalf("master_repl_offset %d after loading the empty RDB, want 123456", got)
	}
}

// Where the stream since the snapshot cannot be read as commands, the
// client gets a clear error rather than a stream from a guessed offset.
func TestFilteredReplicaRefusedWithoutABoundary(t *testing.T) {
	store, _ := storeWithHistory(t)
	if err := store.Append([]byte("not a command\r\n")); err != nil {
		t.Fatal(err)
	}
	_, br := filteredClient(t, store,
		[]string{"REPLCONF", "capa", "eof"}, []string{"REPLCONF", "rdb-filter-only", ""}, []string{"PSYNC", "?", "-1"})
	for _, want := range []string{"+OK", "+OK", "-ERR replproxy cannot tell where the stream's last command starts"} {
		if got := readLine(t, br); !strings.HasPrefix(got, want) {
			t.Fatalf("reply %q, want %q", got, want)
		}
	}
}

// After an upstream +CONTINUE with a new ID, the empty RDB names the new
// ID, at the boundary reached: the stream read since the snapshot spans the
// shift, whose bytes continue as they were.
func TestFilteredReplicaAfterAnIDShift(t *testing.T) {
	store, _ := storeWithHistory(t)
	set := string(resp.AppendCommand(nil, "SET", "k", "v"))
	if err := store.Append([]byte(set[:7])); err != nil {
		t.Fatal(err)
	}
	newID := backlog.RandomReplID()
	if err := store.ShiftID(newID); err != nil {
		t.Fatal(err)
	}
	if err := store.Append([]byte(set[7:] + set[:9])); err != nil {
		t.Fatal(err)
	}
	_, br := filteredClient(t, store,
		[]string{"REPLCONF", "capa", "eof"}, []string{"REPLCONF", "rdb-filter-only", ""}, []string{"PSYNC", "?", "-1"})
	want := "+FULLRESYNC " + newID + " " + strconv.Itoa(1500+len(set))
	for _, w := range []string{"+OK", "+OK", want} {
		if got := readLine(t, br); got != w {
			t.Fatalf("reply %q, want %q", got, w)
		}
	}
}
