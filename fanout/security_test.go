package fanout

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/resp"
)

// selfSignedTLS is a server certificate good enough for a handshake that
// the test never completes.
func selfSignedTLS(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "replproxy-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

// serveOn runs s on ln until the test ends.
func serveOn(t *testing.T, s *Server, ln net.Listener) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.Serve(ctx, ln)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// A connection the proxy refuses (here: over maxclients) on a TLS port
// must not wait forever for a ClientHello that never comes: the refusal's
// write runs the handshake, which reads. Each such connection used to keep
// a goroutine and a descriptor for good, past maxclients.
func TestRefusedTLSConnectionIsClosed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	store := openTestStore(t)
	s := newTestServer(Config{Store: store, Logger: zerolog.Nop(), MaxClients: 1})
	serveOn(t, s, tls.NewListener(ln, selfSignedTLS(t)))

	holder, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	deadline := time.Now().Add(5 * time.Second)
	for s.clientCount(0) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the first connection was never admitted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, silent)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("a refused TLS connection that sends nothing was still open after 10s")
	}
	if got := s.stats.RejectedConns.Load(); got != 1 {
		t.Fatalf("rejected_connections %d, want 1", got)
	}
}

// REPLCONF ip-address is printed into INFO's slaveN lines, which Sentinel
// reads line by line, the last value winning. A replica-role user could
// announce "x\r\nslave_priority:1" and so unset the proxy's slave_priority:0,
// making Sentinel pick the proxy, which cannot be promoted, at failover.
// Only what a host name or an IP address is made of is accepted.
func TestReplconfIPAddressCannotInjectInfoLines(t *testing.T) {
	hash := sha256.Sum256([]byte("pw"))
	s := newTestServer(Config{Logger: zerolog.Nop(), Users: []User{{"repl", hash, RoleReplica}}})
	var in []byte
	in = resp.AppendCommand(in, "AUTH", "repl", "pw")
	for _, ip := range []string{"10.0.0.1\r\nslave_priority:1", "a,port=1", "x\nrole:master", "a b"} {
		in = resp.AppendCommand(in, "REPLCONF", "ip-address", ip)
	}
	for _, ip := range []string{"10.0.0.1", "fe80::1%eth0", "replica-1.example.com", "2001:db8::7"} {
		in = resp.AppendCommand(in, "REPLCONF", "ip-address", ip)
	}
	conn := &fuzzConn{in: bytes.NewReader(in), remote: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}}
	s.serveConn(context.Background(), conn)
	replies, err := parseReplies(conn.out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"+OK", "-ERR", "-ERR", "-ERR", "-ERR", "+OK", "+OK", "+OK", "+OK"}
	if len(replies) != len(want) {
		t.Fatalf("replies %q", replies)
	}
	for i, w := range want {
		if !strings.HasPrefix(replies[i], w) {
			t.Errorf("reply %d: %q, want %s", i, replies[i], w)
		}
	}
}

// A replica cannot have received more than was sent to it. A replica-role
// user that ACKs an offset it was never sent must not count toward the
// ACK the proxy sends its master in ack_mode replicas: that ACK is what
// the master's WAIT and min-replicas-to-write trust.
func TestAckQuorumIgnoresOffsetsNeverSent(t *testing.T) {
	s := newTestServer(Config{Logger: zerolog.Nop()})
	liar := &replica{srv: s, log: zerolog.Nop()}
	liar.state.Store(uint32(StateOnline))
	liar.sentOff.Store(1001) // bytes up to offset 1000 went out
	liar.ackOff.Store(1 << 50)
	liar.ackTime.Store(time.Now().UnixNano())
	s.addReplica(liar)
	off, ok := s.AckQuorum(1)
	if !ok || off != 1000 {
		t.Fatalf("AckQuorum(1) = %d, %v; want 1000, true", off, ok)
	}
}

// The pacing memory is keyed by what the replica announces (ip-address and
// listening-port), so a replica-role user can make up a new key for every
// full sync it abandons. It stays bounded, and one entry is not paid for
// with a scan of all the others.
func TestPacingMemoryIsBounded(t *testing.T) {
	s := newTestServer(Config{Logger: zerolog.Nop()})
	gone := errors.Join(errReplicaGone, errors.New("EOF"))
	for i := 0; i < 3*maxPacedPeers; i++ {
		r := &replica{srv: s, ip: "10.9.0.1", port: i + 1, log: zerolog.Nop()}
		a := &fullSyncAttempt{r: r, snap: backlog.SnapshotInfo{Offset: 100}, done: make(chan struct{})}
		a.ended(gone)
	}
	if n := len(s.pacer.peers); n > maxPacedPeers {
		t.Fatalf("%d replicas remembered, want at most %d", n, maxPacedPeers)
	}
	// The latest failure is still paced.
	last := &replica{srv: s, ip: "10.9.0.1", port: 3 * maxPacedPeers, log: zerolog.Nop()}
	if pp := s.pacer.peers[last.pacingKey()]; pp == nil || pp.notBefore.IsZero() {
		t.Fatal("the latest failed replica was forgotten")
	}
}

// remoteConn is one end of a pipe that claims to come from another host.
type remoteConn struct{ net.Conn }

func (remoteConn) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 40000} }

// Protected mode shuts strangers out entirely: a connection it refuses
// must not take one of the maxclients slots while the refusal is under
// way, or a remote flood would lock out the loopback replicas it protects.
func TestProtectedModeRefusalTakesNoClientSlot(t *testing.T) {
	s := newTestServer(Config{Logger: zerolog.Nop(), ProtectedMode: true, MaxClients: 1})
	srvEnd, peer := net.Pipe()
	defer peer.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serveConn(context.Background(), remoteConn{srvEnd})
	}()
	br := bufio.NewReader(peer)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "-DENIED") {
		t.Fatalf("read %q, %v", line, err)
	}
	// The refusal now lingers, reading, before it closes.
	if n := s.clientCount(0); n != 0 {
		t.Fatalf("a connection refused by protected mode holds %d client slot(s)", n)
	}
	<-done
}

// A replica keeps its full sync only while it takes the snapshot: one that
// sends newlines or ACKs (which keep a loading replica alive) but reads
// nothing would otherwise hold a full-sync slot, and the snapshot file it
// has open, for as long as it likes.
func TestFullSyncNeedsProgress(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "snap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(bytes.Repeat([]byte("r"), 1<<20)); err != nil {
		t.Fatal(err)
	}
	f.Seek(0, io.SeekStart)
	s := newTestServer(Config{Logger: zerolog.Nop(), ReplTimeout: 300 * time.Millisecond})
	srvEnd, peer := net.Pipe() // unbuffered: nothing is taken unless read
	defer peer.Close()
	defer srvEnd.Close()
	r := &replica{srv: s, conn: srvEnd, out: srvEnd, log: zerolog.Nop()}
	r.ackTime.Store(time.Now().UnixNano())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // the replica's newlines, as a loading replica sends them
		for ctx.Err() == nil {
			r.ackTime.Store(time.Now().UnixNano())
			time.Sleep(50 * time.Millisecond)
		}
	}()
	done := make(chan error, 1)
	go func() { done <- r.sendFile(ctx, f, 1<<20) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the snapshot counted as sent to a replica that read none of it")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a replica that reads nothing held its full sync for 10s with a 300ms timeout")
	}
}

// A replica that reads slowly, so that sends time out part way, still gets
// every byte of the snapshot in order: a copy that timed out had read more
// of the file than it wrote, and the rest used to be skipped.
func TestSlowFullSyncLosesNoBytes(t *testing.T) {
	const size = 256 << 10
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i * 7 / 13)
	}
	f, err := os.CreateTemp(t.TempDir(), "snap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(want); err != nil {
		t.Fatal(err)
	}
	f.Seek(0, io.SeekStart)
	s := newTestServer(Config{Logger: zerolog.Nop(), ReplTimeout: 200 * time.Millisecond, chunkBytes: 64 << 10})
	srvEnd, peer := net.Pipe()
	defer peer.Close()
	defer srvEnd.Close()
	r := &replica{srv: s, conn: srvEnd, out: srvEnd, log: zerolog.Nop()}
	r.ackTime.Store(time.Now().UnixNano())
	done := make(chan error, 1)
	go func() {
		done <- r.sendFile(context.Background(), f, size)
		srvEnd.Close()
	}()
	var got []byte
	buf := make([]byte, 16<<10)
	for {
		r.ackTime.Store(time.Now().UnixNano()) // its newlines
		n, err := peer.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
		time.Sleep(100 * time.Millisecond) // 160 KB/s: each 64 KiB send times out
	}
	if err := <-done; err != nil {
		t.Fatalf("sendFile: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the replica received %d bytes, not the %d of the snapshot in order", len(got), size)
	}
}

// After a write times out, a TLS connection refuses every later write. A
// TLS replica that stops reading but keeps ACKing (a replica-role user can)
// used to spin the sender in a loop of failed writes for as long as it
// kept ACKing; it is dropped at its first timeout instead.
func TestTLSReplicaWriteTimeoutEndsStream(t *testing.T) {
	lg, err := backlog.OpenLog(t.TempDir(), 1, backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: backlog.FsyncNo})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close()
	if err := lg.Append(bytes.Repeat([]byte("w"), 512<<10)); err != nil {
		t.Fatal(err)
	}
	cur, err := lg.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	srvEnd, peer := net.Pipe()
	defer peer.Close()
	srvTLS := tls.Server(srvEnd, selfSignedTLS(t))
	defer srvTLS.Close()
	cliTLS := tls.Client(peer, &tls.Config{InsecureSkipVerify: true})
	hs := make(chan error, 1)
	go func() { hs <- cliTLS.Handshake() }()
	if err := srvTLS.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}
	s := newTestServer(Config{Logger: zerolog.Nop(), ReplTimeout: 200 * time.Millisecond})
	r := &replica{srv: s, conn: srvTLS, out: srvTLS, log: zerolog.Nop()}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // ACKs, and not a byte read
		for ctx.Err() == nil {
			r.ackTime.Store(time.Now().UnixNano())
			time.Sleep(20 * time.Millisecond)
		}
	}()
	done := make(chan error, 1)
	go func() { done <- r.stream(ctx, cur) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("stream ended without an error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream to a TLS replica whose write timed out was still retrying after 5s")
	}
}
