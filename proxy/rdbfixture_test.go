package proxy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/rdbfixture"
	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/resp"
)

// fakeMaster speaks just enough of the master's side of the handshake to
// serve one fixed RDB, for formats no server on this machine writes. It
// counts PSYNCs: a proxy that refuses the RDB asks again and again.
type fakeMaster struct {
	ln     net.Listener
	rdb    []byte
	replid string
	offset int64
	eof    bool   // $EOF:<mark> framing instead of $<len>
	stream []byte // sent after the RDB

	psyncs atomic.Int64
	mu     sync.Mutex
	conns  []net.Conn
	wg     sync.WaitGroup
}

func startFakeMaster(t *testing.T, rdb []byte, replid string, offset int64, eof bool, stream []byte) *fakeMaster {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := &fakeMaster{ln: ln, rdb: rdb, replid: replid, offset: offset, eof: eof, stream: stream}
	m.wg.Add(1)
	go m.accept()
	t.Cleanup(m.close)
	return m
}

func (m *fakeMaster) addr() string { return m.ln.Addr().String() }

func (m *fakeMaster) close() {
	m.ln.Close()
	m.mu.Lock()
	for _, c := range m.conns {
		c.Close()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

func (m *fakeMaster) accept() {
	defer m.wg.Done()
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return
		}
		m.mu.Lock()
		m.conns = append(m.conns, c)
		m.mu.Unlock()
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer c.Close()
			m.serve(c)
		}()
	}
}

func (m *fakeMaster) serve(c net.Conn) {
	rd := resp.NewReader(bufio.NewReader(c), resp.DefaultLimits())
	streamed := false
	for {
		args, err := rd.ReadCommand()
		if err != nil {
			return
		}
		if len(args) == 0 {
			continue
		}
		switch strings.ToUpper(string(args[0])) {
		case "PING":
			c.Write([]byte("+PONG\r\n"))
		case "REPLCONF":
			if len(args) > 1 && strings.EqualFold(string(args[1]), "ack") {
				// As a diskless master does, the stream starts at the
				// first ACK, so nothing follows the EOF mark at once.
				if !streamed {
					c.Write(m.stream)
					streamed = true
				}
				continue
			}
			c.Write([]byte("+OK\r\n"))
		case "PSYNC":
			m.psyncs.Add(1)
			m.fullSync(c)
		default:
			c.Write([]byte("-ERR unknown command\r\n"))
		}
	}
}

func (m *fakeMaster) fullSync(c net.Conn) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "+FULLRESYNC %s %d\r\n", m.replid, m.offset)
	if m.eof {
		mark := strings.Repeat("f", 40)
		fmt.Fprintf(&b, "$EOF:%s\r\n", mark)
		b.Write(m.rdb)
		b.WriteString(mark)
	} else {
		fmt.Fprintf(&b, "$%d\r\n", len(m.rdb))
		b.Write(m.rdb)
	}
	c.Write(b.Bytes())
}

// Issue 11, point 2: RDBs in formats newer than the pinned parser knows
// (Redis 8.6 and 8.8, Valkey 9.0 and 9.2, Redis 7.4 cluster slot info) are
// stored and served byte for byte to a replica, after one full sync with
// the master: no retry loop.
func TestNewerRDBFormatsRelayed(t *testing.T) {
	t.Parallel()
	replid := strings.Repeat("ab", 20)
	const offset = 1000
	stream := resp.AppendCommand(nil, "SET", "after", "snapshot")
	cases := []rdbfixture.Spec{
		{Header: "REDIS0012", RedisVer: "7.4.1", SlotInfo: true},
		{Header: "REDIS0013", RedisVer: "8.6.0", KeyMeta: true},
		{Header: "REDIS0014", RedisVer: "8.8.0", SlotInfo: true},
		{Header: "VALKEY080", RedisVer: "7.2.4", ValkeyVer: "9.0.0"},
		{Header: "VALKEY081", RedisVer: "7.2.4", ValkeyVer: "9.2.0", KeyMeta: true},
		{Header: "REDIS0099", RedisVer: "99.0.0", SlotInfo: true}, // one day's format
	}
	for i, spec := range cases {
		t.Run(spec.Header, func(t *testing.T) {
			spec.ReplID, spec.ReplOffset, spec.Key, spec.Value = replid, offset, "k", "v"
			rdb := rdbfixture.Build(spec)
			m := startFakeMaster(t, rdb, replid, offset, i%2 == 1, stream)
			p := startProxy(t, proxyConfig(t, m.addr()))
			redisproc.Eventually(t, 20*time.Second, "the proxy to store the stream after the snapshot", func() (bool, string) {
				off := p.infoInt("replication", "master_repl_offset")
				return off == offset+int64(len(stream)), fmt.Sprint("proxy offset ", off)
			})

			w, err := dialWire(p.cfg.Listen)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			// As a Redis replica announces itself, with no version: the
			// proxy cannot know what it loads and relays the RDB as stored.
			// (One that announces an older version is served a converted
			// snapshot, or refused with the reason: compat_convert_test.go.)
			for _, cmd := range [][]string{{"REPLCONF", "listening-port", "7777"}, {"REPLCONF", "capa", "eof", "capa", "psync2"}} {
				if reply, err := w.do(cmd...); err != nil || reply != "+OK" {
					t.Fatalf("%v: %q %v", cmd, reply, err)
				}
			}
			got := readFullSync(t, w, "PSYNC", "?", "-1")
			if want := fmt.Sprintf("+FULLRESYNC %s %d", replid, offset); got.line != want {
				t.Fatalf("PSYNC reply %q, want %q", got.line, want)
			}
			if !bytes.Equal(got.rdb, rdb) {
				t.Fatalf("replica got %d RDB bytes that differ from the %d the master sent", len(got.rdb), len(rdb))
			}
			after := make([]byte, len(stream))
			w.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(w.br, after); err != nil || !bytes.Equal(after, stream) {
				t.Fatalf("stream after the snapshot: %q, %v", after, err)
			}
			// Long enough for a refusing proxy to have retried (its backoff
			// starts well under a second).
			time.Sleep(1500 * time.Millisecond)
			if n := m.psyncs.Load(); n != 1 {
				t.Fatalf("the proxy sent %d PSYNCs to the master, want 1", n)
			}
			log := tail(p.logPath, 40)
			if !strings.Contains(log, `"rdb_header":"`+spec.Header+`"`) {
				t.Fatalf("the log does not name the RDB header %s", spec.Header)
			}
			newer := strings.Contains(log, "RDB format newer than this proxy knows")
			if newer != (spec.Header == "REDIS0099") {
				t.Fatalf("%s: warned of a format newer than the proxy knows: %v", spec.Header, newer)
			}
		})
	}
}

type fullSyncReply struct {
	line string
	rdb  []byte
}

// readFullSync sends a PSYNC and reads the +FULLRESYNC line and a $<len>
// RDB, skipping the newlines a waiting master sends.
func readFullSync(t *testing.T, w *wire, args ...string) fullSyncReply {
	t.Helper()
	w.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := w.Write(resp.AppendCommand(nil, args...)); err != nil {
		t.Fatal(err)
	}
	var out fullSyncReply
	for out.rdb == nil {
		line, err := w.br.ReadString('\n')
		if err != nil {
			t.Fatalf("read full sync: %v", err)
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
		case strings.HasPrefix(line, "+"):
			out.line = line
		case strings.HasPrefix(line, "$"):
			var n int
			fmt.Sscanf(line, "$%d", &n)
			out.rdb = make([]byte, n)
			if _, err := io.ReadFull(w.br, out.rdb); err != nil {
				t.Fatalf("read RDB: %v", err)
			}
		default:
			t.Fatalf("unexpected line %q", line)
		}
	}
	return out
}

// What the RDB check still refuses: bytes damaged in transit, shown by a
// CRC-64 mismatch in a known format, and a repl-offset that contradicts
// +FULLRESYNC. The proxy keeps nothing and asks again.
func TestBadRDBRefused(t *testing.T) {
	t.Parallel()
	replid := strings.Repeat("cd", 20)
	corrupt := rdbfixture.Build(rdbfixture.Spec{Header: "REDIS0013", RedisVer: "8.6.0", ReplID: replid, ReplOffset: 10, Key: "k", Value: "v"})
	corrupt[len(corrupt)-12] ^= 1
	cases := []struct {
		name string
		rdb  []byte
		want string
	}{
		{"checksum", corrupt, "RDB checksum mismatch"},
		{"offset", rdbfixture.Build(rdbfixture.Spec{Header: "REDIS0013", RedisVer: "8.6.0", ReplID: replid, ReplOffset: 11}),
			"says repl-offset 11, the master announced 10"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := startFakeMaster(t, c.rdb, replid, 10, false, nil)
			p := startProxy(t, proxyConfig(t, m.addr()))
			redisproc.Eventually(t, 20*time.Second, "the proxy to ask again", func() (bool, string) {
				return m.psyncs.Load() >= 2, fmt.Sprint(m.psyncs.Load(), " PSYNCs")
			})
			if off := p.infoInt("replication", "master_repl_offset"); off > 0 {
				t.Fatalf("the proxy adopted the RDB (offset %d)", off)
			}
			if !strings.Contains(tail(p.logPath, 40), c.want) {
				t.Fatalf("the log does not say %q", c.want)
			}
		})
	}
}
