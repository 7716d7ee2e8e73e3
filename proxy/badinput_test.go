package proxy_test

import (
	"errors"
	"io"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// Issue 2, point 7: bad input on the proxy port gets an error reply (or
// closes only the offending client), allocates nothing for a claimed
// length, and replication to everyone else goes on.
func TestBadInputIsContained(t *testing.T) {
	t.Parallel()
	r := startRelay(t, 1)
	stopLoad := runLoad(t, r.master, 8)
	r.waitInSyncWhileLoading(t)

	closing := []struct{ name, raw, reply string }{
		{"malformed multibulk length", "*x\r\n", "-ERR Protocol error: invalid multibulk length"},
		{"huge multibulk length", "*99999999\r\n", "-ERR Protocol error: invalid multibulk length"},
		{"huge bulk length", "*1\r\n$2000000000\r\n", "-ERR Protocol error: invalid bulk length"},
		{"bulk without its header", "*2\r\n$4\r\nPING\r\n:1\r\n", "-ERR Protocol error: expected '$'"},
		{"inline line too long", strings.Repeat("A", 100<<10) + "\r\n", "-ERR Protocol error: too big inline request"},
	}
	for _, c := range closing {
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		w, err := dialWire(r.proxy.cfg.Listen)
		if err != nil {
			t.Fatal(err)
		}
		got, err := w.send([]byte(c.raw))
		if err != nil || !strings.HasPrefix(got, c.reply) {
			t.Fatalf("%s: reply %q (%v), want %q", c.name, got, err, c.reply)
		}
		w.SetDeadline(time.Now().Add(5 * time.Second))
		// EOF, or a reset when the proxy closed with our input unread.
		if _, err := w.br.ReadByte(); !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("%s: connection not closed after a protocol error: %v", c.name, err)
		}
		w.Close()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		// The load generator runs in this process too; 2 GB claimed must not
		// show up, a few MB of ordinary work may.
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 256<<20 {
			t.Fatalf("%s: %d MB allocated", c.name, grew>>20)
		}
	}

	w, err := dialWire(r.proxy.cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	staying := []struct {
		args  []string
		reply string
	}{
		{[]string{"PSYNC", "garbage"}, "-ERR wrong number of arguments for 'psync' command"},
		{[]string{"CONFIG"}, "-ERR wrong number of arguments for 'config' command"},
		{[]string{"client"}, "-ERR wrong number of arguments for 'client' command"},
		{[]string{"SUBSCRIBE"}, "-ERR wrong number of arguments for 'subscribe' command"},
		{[]string{"PSYNC", "?", "not-a-number"}, "-ERR value is not an integer or out of range"},
		{[]string{"REPLCONF", "listening-port"}, "-ERR syntax error"},
		{[]string{"REPLCONF", "bogus", "1"}, "-ERR Unrecognized REPLCONF option: bogus"},
		{[]string{"FLUSHALL"}, "-ERR unknown command 'FLUSHALL'"},
		{[]string{"SELECT", "3"}, "-ERR replproxy holds no data"},
		{[]string{"PING"}, "+PONG"},
	}
	for _, c := range staying {
		got, err := w.do(c.args...)
		if err != nil || !strings.HasPrefix(got, c.reply) {
			t.Fatalf("%v: reply %q (%v), want %q", c.args, got, err, c.reply)
		}
	}

	stopLoad()
	r.waitInSync(t)
	expectInt(t, "proxy connected_slaves", r.proxy.infoInt("replication", "connected_slaves"), 1)
	if got := r.proxy.infoInt("stats", "rejected_protocol_errors"); got != int64(len(closing)) {
		t.Fatalf("rejected_protocol_errors = %d, want %d", got, len(closing))
	}
}

// waitInSyncWhileLoading waits for the replicas to be online without
// stopping the load: their link is up and streaming.
func (r *relay) waitInSyncWhileLoading(t *testing.T) {
	t.Helper()
	for _, s := range r.replicas {
		redisproc.Eventually(t, syncTimeout, "replica link up", func() (bool, string) {
			st := s.Info("replication")["master_link_status"]
			return st == "up", st
		})
	}
}
