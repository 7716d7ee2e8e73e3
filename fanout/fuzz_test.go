package fanout

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/resp"
)

// Issue 10, point 6: FuzzDispatch drives the whole downstream side of one
// connection (RESP reader, AUTH, roles, MULTI, pub/sub, REPLICAOF, the
// switch to a replica) with arbitrary command sequences, as each kind of
// peer. Whatever arrives, the connection ends, the replies are well-formed
// RESP, and only an admin ever moves the upstream link.

// fuzzMode is who the fuzzed peer is.
type fuzzMode int

const (
	modeOpen      fuzzMode = iota // no credentials configured, loopback peer
	modeProtected                 // no credentials configured, remote peer
	modeStranger                  // credentials configured, never authenticates
	modeReplica                   // authenticates as a replica-role user
	modeMonitor                   // authenticates as a monitor-role user
	modeAdmin                     // AUTH <requirepass>: the default user, admin
	fuzzModes
)

const fuzzPass = "fuzz-secret"

// fuzzUpstream stands in for the upstream link, which the dispatcher only
// asks for its status and tells to repoint; it counts the repoints.
type fuzzUpstream struct{ repoints atomic.Int64 }

func (u *fuzzUpstream) LinkStatus() LinkStatus {
	return LinkStatus{MasterHost: "127.0.0.1", MasterPort: 6379, State: LinkConnected, LastIO: time.Now()}
}

func (u *fuzzUpstream) Repoint(addr, why string) bool {
	u.repoints.Add(1)
	return true
}

// fuzzConn feeds the input and collects what the server writes.
type fuzzConn struct {
	in     *bytes.Reader
	remote net.Addr
	mu     sync.Mutex
	out    bytes.Buffer
	closed atomic.Bool
}

func (c *fuzzConn) Read(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.in.Read(p)
}

func (c *fuzzConn) Write(p []byte) (int, error) {
	if c.closed.Load() {
		return 0, net.ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(p)
}

func (c *fuzzConn) Close() error                     { c.closed.Store(true); return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 6380} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return c.remote }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// fuzzInput turns fuzz bytes into the peer's mode and what it sends: after
// the mode byte, a 0 byte says raw bytes follow (the reader's territory),
// anything else says commands follow, split on 0x01, arguments on 0x00.
func fuzzInput(data []byte) (fuzzMode, []byte) {
	if len(data) < 2 {
		return modeOpen, data
	}
	mode := fuzzMode(data[0]) % fuzzModes
	var in []byte
	switch mode {
	case modeReplica:
		in = resp.AppendCommand(in, "AUTH", "repl", fuzzPass)
	case modeMonitor:
		in = resp.AppendCommand(in, "AUTH", "mon", fuzzPass)
	case modeAdmin:
		in = resp.AppendCommand(in, "AUTH", fuzzPass)
	}
	if data[1] == 0 {
		return mode, append(in, data[2:]...)
	}
	for _, cmd := range bytes.Split(data[2:], []byte{1}) {
		in = resp.AppendCommand(in, strings.Split(string(cmd), "\x00")...)
	}
	return mode, in
}

var fuzzSeeds = [][]string{
	{"PING"},
	{"REPLICAOF", "10.0.0.9", "6379"},
	{"SYNC"},
	{"REPLCONF", "listening-port", "6379", "capa", "eof", "capa", "psync2"},
	{"PSYNC", "?", "-1"},
	{"CLIENT", "SETNAME", "sentinel-1"},
	{"SUBSCRIBE", HelloChannel},
	{"SUBSCRIBE", "other"},
	{"PUBLISH", HelloChannel, "hello"},
	{"MULTI"},
	{"SLAVEOF", "127.0.0.1", "6390"},
	{"CONFIG", "REWRITE"},
	{"CLIENT", "KILL", "TYPE", "normal"},
	{"EXEC"},
	{"AUTH", "repl", "wrong"},
	{"AUTH", "default", fuzzPass},
	{"INFO", "replication"},
	{"ROLE"},
	{"ECHO", strings.Repeat("x", 100)},
	{"DISCARD"},
	{"QUIT"},
}

func FuzzDispatch(f *testing.F) {
	join := func(cmds ...[]string) []byte {
		parts := make([]string, len(cmds))
		for i, c := range cmds {
			parts[i] = strings.Join(c, "\x00")
		}
		return []byte(strings.Join(parts, "\x01"))
	}
	for mode := fuzzMode(0); mode < fuzzModes; mode++ {
		f.Add(append([]byte{byte(mode), 1}, join(fuzzSeeds...)...))
		f.Add(append([]byte{byte(mode), 1}, join(fuzzSeeds[9:14]...)...)) // Sentinel's reconfiguration
		f.Add(append([]byte{byte(mode), 1}, join(fuzzSeeds[3:5]...)...))  // a replica's handshake
		f.Add(append([]byte{byte(mode), 1}, join([]string{"MULTI"}, []string{"PING"}, []string{"PING"}, []string{"PING"},
			[]string{"PING"}, []string{"PING"}, []string{"EXEC"}, []string{"PING"})...))
		f.Add(append([]byte{byte(mode), 0}, "*11\r\n$1\r\na\r\n"...))
		f.Add(append([]byte{byte(mode), 0}, "*1\r\n$20000\r\n"...))
		f.Add(append([]byte{byte(mode), 0}, "PING\r\nAUTH x\r\nREPLICAOF no one\r\n"...))
		// Inline commands past the argument limits, before and after AUTH.
		f.Add(append([]byte{byte(mode), 0}, "AUTH a b c d e f g h i j k\r\nPING\r\n"...))
		f.Add(append([]byte{byte(mode), 0}, "AUTH "+fuzzPass+"\r\nECHO"+strings.Repeat(" x", 1100)+"\r\nPING\r\n"...))
	}
	store := openTestStore(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		mode, in := fuzzInput(data)
		if mode == modeStranger && bytes.Contains(data, []byte(fuzzPass)) {
			return // it found the password: no longer a stranger
		}
		up := &fuzzUpstream{}
		cfg := Config{Store: store, Upstream: up, Logger: zerolog.Nop(), ProtectedMode: true,
			MultiMaxCommands: 4, MultiMaxBytes: 256, holdAhead: time.Millisecond}
		if mode >= modeStranger {
			hash := sha256.Sum256([]byte(fuzzPass))
			cfg.Users = []User{{DefaultUser, hash, RoleAdmin}, {"repl", hash, RoleReplica}, {"mon", hash, RoleMonitor}}
		}
		remote := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
		if mode == modeProtected {
			remote = &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000}
		}
		conn := &fuzzConn{in: bytes.NewReader(in), remote: remote}
		srv := newTestServer(cfg)
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.serveConn(context.Background(), conn)
		}()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("the connection did not end once its input did (mode %d)", mode)
		}
		checkFuzzOutput(t, mode, conn.out.Bytes(), up.repoints.Load())
		if n := srv.clientCount(0); n != 0 {
			t.Fatalf("%d clients counted after the connection ended", n)
		}
	})
}

func checkFuzzOutput(t *testing.T, mode fuzzMode, out []byte, repoints int64) {
	if repoints > 0 && mode != modeOpen && mode != modeAdmin {
		t.Fatalf("mode %d repointed the upstream link", mode)
	}
	if mode == modeProtected {
		if want := "-" + deniedMsg + "\r\n"; string(out) != want {
			t.Fatalf("protected mode answered %q", out)
		}
		return
	}
	replies, err := parseReplies(out)
	if err != nil {
		t.Fatalf("mode %d: malformed output: %v\n%q", mode, err, out)
	}
	queued := 0
	for i, r := range replies {
		if strings.HasPrefix(r, "-ERR Protocol error") && i != len(replies)-1 {
			t.Fatalf("mode %d: replies after a protocol error: %q", mode, replies[i:])
		}
		if r == "+QUEUED" {
			if queued++; queued > 4 {
				t.Fatalf("mode %d: more commands queued than MultiMaxCommands", mode)
			}
		} else if !strings.HasPrefix(r, "-ERR transaction already failed") && !strings.HasPrefix(r, "-ERR MULTI queue limit") {
			queued = 0
		}
		switch mode {
		case modeStranger:
			if !strings.HasPrefix(r, "-NOAUTH") && !strings.HasPrefix(r, "-WRONGPASS") && !strings.HasPrefix(r, "-ERR") && r != "+OK" {
				t.Fatalf("a client that never authenticated got %q", r)
			}
		case modeMonitor:
			if r == "\n" || strings.HasPrefix(r, "+FULLRESYNC") || strings.HasPrefix(r, "+CONTINUE") {
				t.Fatalf("a monitor-role user got a replication stream: %q", r)
			}
		}
	}
}

// parseReplies reads the top-level replies of out, each as its first
// line, and stops at a replication stream (after +FULLRESYNC or
// +CONTINUE, or a keepalive newline while a sync waits).
func parseReplies(out []byte) ([]string, error) {
	br := bufio.NewReader(bytes.NewReader(out))
	var replies []string
	for {
		line, err := br.ReadString('\n')
		if errors.Is(err, io.EOF) && line == "" {
			return replies, nil
		}
		if err != nil {
			return replies, fmt.Errorf("unterminated line %q", line)
		}
		if line == "\n" {
			return append(replies, line), nil
		}
		first := strings.TrimSuffix(line, "\r\n")
		replies = append(replies, first)
		if strings.HasPrefix(first, "+FULLRESYNC") || strings.HasPrefix(first, "+CONTINUE") {
			return replies, nil
		}
		if err := skipReply(br, first); err != nil {
			return replies, err
		}
	}
}

// skipReply consumes the rest of a reply whose first line is given.
func skipReply(br *bufio.Reader, first string) error {
	if len(first) == 0 {
		return errors.New("empty reply line")
	}
	switch first[0] {
	case '+', '-', ':':
		return nil
	case '$':
		n, err := strconv.Atoi(first[1:])
		if err != nil || n < -1 {
			return fmt.Errorf("bad bulk header %q", first)
		}
		if n == -1 {
			return nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil || string(buf[n:]) != "\r\n" {
			return fmt.Errorf("bulk of %d bytes cut short or unterminated", n)
		}
		return nil
	case '*':
		n, err := strconv.Atoi(first[1:])
		if err != nil || n < -1 {
			return fmt.Errorf("bad array header %q", first)
		}
		for i := 0; i < n; i++ {
			line, err := br.ReadString('\n')
			if err != nil || !strings.HasSuffix(line, "\r\n") {
				return fmt.Errorf("array element %d: unterminated line %q", i, line)
			}
			if err := skipReply(br, strings.TrimSuffix(line, "\r\n")); err != nil {
				return err
			}
		}
		return nil
	}
	return fmt.Errorf("reply line %q starts with no RESP type", first)
}
