package restore

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/resp"
)

// feed is the master of the temporary server: it serves it the snapshot
// and the stream after it up to the target, as the proxy serves a replica
// a full sync. A replica never expires a key by itself, and keeps keys
// whose TTL passed when it loads its master's RDB: it waits for the
// master's DELs. Fed as a client instead, the server would expire keys at
// replay time, and later commands would run on missing keys.
//
// The proxy's own server (fanout) is not reused: it serves a live, locked
// store and follows it forever, where a restore reads a data dir it does
// not own and must stop at the target.
type feed struct {
	ln       net.Listener
	password string
	conn     net.Conn
	bw       *bufio.Writer
	acked    atomic.Int64 // the highest offset the replica acknowledged
	ackSeen  chan struct{}
	readDone chan struct{} // closed when the replica's side of the link ends
	readErr  error         // why, once readDone is closed
	unwatch  func() bool   // stops closing conn when the restore's context ends
}

// handshakeTimeout bounds the replica's connection and handshake: a local
// server that has not sent PSYNC by then is not going to.
const handshakeTimeout = 30 * time.Second

// newFeed listens on loopback: Redis replicates only over TCP. The random
// password keeps other local users from taking the dataset.
func newFeed() (*feed, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the temporary server's replication link: %w", err)
	}
	var pw [24]byte
	if _, err := rand.Read(pw[:]); err != nil {
		ln.Close()
		return nil, fmt.Errorf("password for the replication link: %w", err)
	}
	f := &feed{ln: ln, password: hex.EncodeToString(pw[:]), ackSeen: make(chan struct{}, 1), readDone: make(chan struct{})}
	f.acked.Store(-1) // a snapshot at offset 0 is acknowledged as 0
	return f, nil
}

func (f *feed) port() string {
	return strconv.Itoa(f.ln.Addr().(*net.TCPAddr).Port)
}

// close ends the link; the replica's reader goroutine ends with it.
func (f *feed) close() {
	f.ln.Close()
	if f.conn != nil {
		f.unwatch()
		f.conn.Close()
		<-f.readDone
	}
}

// accept takes the replica's connection and answers its handshake up to
// PSYNC, which it answers with +FULLRESYNC replid offset. Anyone else on
// the port is refused: only the one who knows the password gets the data.
// Each connection's handshake runs on its own, so a local user who
// connects first and says nothing cannot hold the replica out until the
// handshake's deadline has passed and the restore failed.
func (f *feed) accept(ctx context.Context, replid string, offset int64) error {
	stop := context.AfterFunc(ctx, func() { f.ln.Close() })
	defer stop()
	f.ln.(*net.TCPListener).SetDeadline(time.Now().Add(handshakeTimeout))
	var (
		mu      sync.Mutex
		pending = map[net.Conn]bool{}
		winner  net.Conn
		over    bool // accept returns: a handshake that ends now loses
		wg      sync.WaitGroup
	)
	// Every handshake ends before accept returns: the winner's, and the
	// others', which closing their connections ends.
	defer func() {
		mu.Lock()
		for c := range pending {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}()
	var acceptErr error
	for {
		conn, err := f.ln.Accept()
		if err != nil {
			acceptErr = err
			break
		}
		mu.Lock()
		if winner != nil {
			mu.Unlock()
			conn.Close()
			continue // the listener is closed: Accept fails next
		}
		pending[conn] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := f.handshake(conn, replid, offset)
			mu.Lock()
			defer mu.Unlock()
			delete(pending, conn)
			if !ok || err != nil || winner != nil || over {
				conn.Close()
				return
			}
			winner = conn
			f.ln.Close() // one replica only: this ends the accept loop
		}()
	}
	// The winner is set before the listener is closed, both under mu.
	mu.Lock()
	over = true
	conn := winner
	mu.Unlock()
	if conn == nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("the temporary server did not connect for replication: %w", acceptErr)
	}
	f.conn, f.bw = conn, bufio.NewWriterSize(conn, 256<<10)
	f.unwatch = context.AfterFunc(ctx, func() { conn.Close() })
	go f.readAcks()
	return nil
}

// handshake answers one connection. ok is true once PSYNC is answered; a
// stranger (wrong password, any other command) gets false and no error.
func (f *feed) handshake(conn net.Conn, replid string, offset int64) (ok bool, err error) {
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	defer conn.SetDeadline(time.Time{})
	rd := resp.NewReader(bufio.NewReader(conn), resp.UnauthenticatedLimits())
	authed := false
	reply := func(s string) error {
		_, err := conn.Write([]byte(s + "\r\n"))
		return err
	}
	for {
		args, err := rd.ReadCommand()
		if err != nil {
			return false, nil
		}
		if len(args) == 0 {
			continue
		}
		switch cmd := strings.ToLower(string(args[0])); {
		case cmd == "auth" && (len(args) == 2 || len(args) == 3):
			if subtle.ConstantTimeCompare(args[len(args)-1], []byte(f.password)) != 1 {
				reply("-WRONGPASS invalid username-password pair")
				return false, nil
			}
			authed = true
			rd.SetLimits(resp.DefaultLimits())
			err = reply("+OK")
		case !authed && cmd == "ping":
			// Redis replicas take -NOAUTH to their first PING and go on.
			err = reply("-NOAUTH Authentication required.")
		case !authed:
			reply("-NOAUTH Authentication required.")
			return false, nil
		case cmd == "ping":
			err = reply("+PONG")
		case cmd == "replconf":
			err = reply("+OK")
		case cmd == "psync":
			return true, reply("+FULLRESYNC " + replid + " " + strconv.FormatInt(offset, 10))
		default:
			reply("-ERR only a replica's handshake is served here")
			return false, nil
		}
		if err != nil {
			return false, nil
		}
	}
}

// readAcks follows the replica's REPLCONF ACKs until the link ends.
func (f *feed) readAcks() {
	defer close(f.readDone)
	rd := resp.NewReader(bufio.NewReader(f.conn), resp.DefaultLimits())
	for {
		args, err := rd.ReadCommand()
		if err != nil {
			f.readErr = err
			return
		}
		if len(args) < 3 || !strings.EqualFold(string(args[0]), "replconf") || !strings.EqualFold(string(args[1]), "ack") {
			continue
		}
		off, err := strconv.ParseInt(string(args[2]), 10, 64)
		if err != nil || off <= f.acked.Load() {
			continue
		}
		f.acked.Store(off)
		select {
		case f.ackSeen <- struct{}{}:
		default:
		}
	}
}

// sendRDB writes the snapshot as a $<len> bulk, as a disk-based master does.
func (f *feed) sendRDB(r io.Reader, size int64) error {
	if _, err := f.bw.WriteString("$" + strconv.FormatInt(size, 10) + "\r\n"); err != nil {
		return f.linkError(err)
	}
	n, err := io.Copy(f.bw, io.LimitReader(r, size))
	if err == nil && n < size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return f.linkError(err)
	}
	return nil
}

func (f *feed) write(p []byte) error {
	if _, err := f.bw.Write(p); err != nil {
		return f.linkError(err)
	}
	return nil
}

func (f *feed) flush() error {
	if err := f.bw.Flush(); err != nil {
		return f.linkError(err)
	}
	return nil
}

// linkError words a failed write: the replica dropping the link is the
// usual cause (it could not load the RDB, say), and its log says why.
func (f *feed) linkError(err error) error {
	return fmt.Errorf("replication link to the temporary server: %w", err)
}

// waitAck waits until the replica acknowledges offset: it has applied
// everything up to it. Redis replicas ACK every second; applied, polled
// meanwhile, says it sooner (ok false while it cannot tell).
func (f *feed) waitAck(ctx context.Context, offset int64, exited <-chan struct{}, applied func() (int64, bool)) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for f.acked.Load() < offset {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return errors.New("the temporary server exited during the replay")
		case <-f.readDone:
			if f.acked.Load() >= offset {
				return nil
			}
			if f.acked.Load() < 0 {
				return fmt.Errorf("the temporary server dropped the replication link before it loaded the snapshot (its log says why): %w", f.readErr)
			}
			return fmt.Errorf("the temporary server dropped the replication link at offset %d, before %d: %w", f.acked.Load(), offset, f.readErr)
		case <-f.ackSeen:
		case <-tick.C:
			if off, ok := applied(); ok && off >= offset {
				return nil
			}
		}
	}
	return nil
}
