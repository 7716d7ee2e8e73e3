package fanout

import (
	"bufio"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/resp"
)

// A downstream replproxy's refresh request names the oldest snapshot it
// can use. One past the stream this proxy holds is never legitimate (a
// requester follows this proxy, so it is never ahead of it): it is refused
// at once, not held for half a minute in a full-sync slot while the
// refresher is told to fetch a snapshot no upstream can have.
func TestRefreshRequestBeyondTheStreamIsRefused(t *testing.T) {
	store := openTestStore(t)
	w, err := store.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("REDIS0010fake"))
	if err := store.Reset(backlog.RandomReplID(), 1000, w); err != nil {
		t.Fatal(err)
	}
	if err := store.Append([]byte(strings.Repeat("x", 500))); err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int64
	s := newTestServer(Config{Store: store, Logger: zerolog.Nop(), MaxConcurrentFullSyncs: 1,
		NeedSnapshot: func(off int64) {
			for cur := asked.Load(); off > cur && !asked.CompareAndSwap(cur, off); cur = asked.Load() {
			}
		}})
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
	req = resp.AppendCommand(req, "REPLCONF", "capa", CapaRefresh)
	req = resp.AppendCommand(req, "REPLCONF", "rdb-only", "1")
	req = resp.AppendCommand(req, "PSYNC", "?", "9223372036854775807")
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	var replies []string
	for len(replies) < 3 {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("replies %q, then %v: a refresh request beyond the stream was not refused within 5s", replies, err)
		}
		if line = strings.TrimRight(line, "\r\n"); line != "" {
			replies = append(replies, line)
		}
	}
	if !strings.HasPrefix(replies[2], "-ERR") {
		t.Fatalf("PSYNC reply %q, want an error", replies[2])
	}
	if got := asked.Load(); got > 1501 {
		t.Fatalf("the refresher was asked for a snapshot at %d, past the stream's end 1500", got)
	}
}
