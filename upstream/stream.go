package upstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/internal/rawsock"
	"github.com/replproxy/replproxy/resp"
)

// getack is how a master asks for an ACK inside the stream. The stream is
// stored verbatim; this pattern only triggers an ACK, so a false match in a
// value costs one harmless extra ACK and no parser state can go wrong after
// resuming mid-command.
const getackText = "*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n"

var getackCmd = []byte(getackText)

const upstreamReadBytes = 512 << 10

// stream appends the master's bytes to the backlog exactly as received;
// acknowledgements go from their own goroutine, so the reader never waits.
// direct says src is the connection's own buffered reader (no TLS, no
// decompression): the socket is then read without it (ingest.fromSocket).
func (l *Link) stream(ctx context.Context, conn *watchedConn, src *bufio.Reader, direct bool) error {
	// Only this session's sync replaces the log (Store.Reset), and it is over.
	lg := l.store.Log()
	if lg == nil {
		return errors.New("store stream: append before the first full sync")
	}
	ackCtx, stopAcks := context.WithCancel(ctx)
	defer stopAcks()
	getack := make(chan struct{}, 1)
	ackErr := make(chan error, 1)
	go func() { ackErr <- l.ackLoop(ackCtx, conn, getack) }()

	in := &ingest{l: l, log: lg, getack: getack}
	var err error
	if raw := rawsock.Of(conn.Conn); direct && raw != nil {
		if err = in.fromBuffer(src); err == nil {
			err = in.fromSocket(ctx, conn, raw)
		}
	} else {
		err = in.fromReader(src)
	}
	select {
	case aerr := <-ackErr:
		if aerr != nil {
			return aerr
		}
	default:
	}
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("master closed the connection")
	}
	return err
}

// ingest turns upstream reads into appends. One read is one append: one
// index record, one wakeup of the senders and one write per caught-up
// replica, made from the very buffer read into. A large buffer lets a read
// take all the socket holds after a busy moment; a quiet link still gets
// each small read at once.
type ingest struct {
	l      *Link
	log    *backlog.Log
	getack chan<- struct{}
	scan   getackScanner
}

// take appends the first n bytes of b, which it takes over.
func (in *ingest) take(b *backlog.Batch, n int) error {
	l := in.l
	l.awaitStream.Store(-1)
	asked := in.scan.seen(b.Space()[:n]) // before the append: the batch is the log's after it
	if err := in.log.AppendBatch(b, n); err != nil {
		if !errors.Is(err, backlog.ErrRewound) {
			l.log.Error().Err(err).Msg("disk error storing the stream; the link stops and nothing more is acknowledged")
		}
		return &storeFailure{fmt.Errorf("store stream: %w", err)}
	}
	l.RawBytes.Add(int64(n))
	if asked {
		select {
		case in.getack <- struct{}{}:
		default:
		}
	}
	return nil
}

// fromReader reads through r until it fails: TLS, or a zstd stream.
func (in *ingest) fromReader(r io.Reader) error {
	for {
		b := in.log.NewBatch(upstreamReadBytes)
		n, err := r.Read(b.Space())
		if n == 0 {
			b.Release()
		} else if aerr := in.take(b, n); aerr != nil {
			return aerr
		}
		if errors.Is(err, io.EOF) {
			return err
		}
		if err != nil {
			return fmt.Errorf("read stream: %w", err)
		}
	}
}

// fromBuffer appends what the handshake's reader already holds.
func (in *ingest) fromBuffer(br *bufio.Reader) error {
	for br.Buffered() > 0 {
		b := in.log.NewBatch(upstreamReadBytes)
		n, _ := br.Read(b.Space()[:min(br.Buffered(), upstreamReadBytes)])
		if err := in.take(b, n); err != nil {
			return err
		}
	}
	return nil
}

// fromSocket reads the socket inside one RawRead, so the poller's
// readiness carries over from one read to the next: after a read that
// left the socket empty it waits for new bytes at once, instead of first
// trying one more read to hear EAGAIN, as a plain Read must. The reads
// themselves are raw system calls (internal/rawsock, where the rule for
// them is written): the socket never blocks.
//
// The repl-timeout deadline is armed once and, when it fires, checked
// against the time the link last finished storing what it read (or
// began to read): a busy link re-arms it every repl-timeout rather than at
// every read. It is not the time of the last byte: an append that stalls
// on the disk longer than repl-timeout, or a slow snapshot commit before
// the stream, is the proxy's silence, not the master's, and the bytes that
// came meanwhile wait in the socket. Nor is it reset by a read that finds
// nothing: each RawRead begins with one, and a silent master would then
// never be called silent.
//
// Closing the socket does not end the callback (it only fails the next
// wait, and the descriptor stays open while the callback runs), so the
// callback looks at ctx before each read: a proxy that is behind reads
// full buffers without ever waiting, and would otherwise go on storing
// the ended session's stream until it caught up.
func (in *ingest) fromSocket(ctx context.Context, c *watchedConn, raw syscall.RawConn) error {
	var b *backlog.Batch
	defer func() {
		if b != nil {
			b.Release()
		}
	}()
	waiting := time.Now()
	for {
		c.Conn.SetReadDeadline(waiting.Add(c.timeout))
		var ierr error
		err := raw.Read(func(fd uintptr) bool {
			for {
				if ctx.Err() != nil {
					ierr = fmt.Errorf("read stream: %w", context.Cause(ctx))
					return true
				}
				if b == nil {
					b = in.log.NewBatch(upstreamReadBytes)
				}
				space := b.Space()
				n, err := rawsock.Read(fd, space)
				switch {
				case errors.Is(err, unix.EAGAIN):
					return false
				case errors.Is(err, unix.EINTR):
					continue
				case err != nil:
					ierr = fmt.Errorf("read stream: %w", err)
					return true
				case n == 0:
					ierr = io.EOF
					return true
				}
				c.noteRead(n)
				batch := b
				b = nil
				if ierr = in.take(batch, n); ierr != nil {
					return true
				}
				// After the append, not before: however long it took, the
				// master's silence is counted from here.
				waiting = time.Now()
				if n < len(space) {
					return false // the socket is empty: wait for its next bytes
				}
			}
		})
		if ierr != nil {
			return ierr
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && time.Since(waiting) < c.timeout {
			continue // bytes came since the deadline was armed
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("read stream: no data from master for %s (repl-timeout): %w", c.timeout, err)
		}
		if err != nil {
			return fmt.Errorf("read stream: %w", err)
		}
	}
}

// getackScanner finds GETACK in a stream read piece by piece, also when
// the command straddles two reads: it keeps the last bytes it saw, one
// short of the command.
type getackScanner struct {
	win  [2 * len(getackText)]byte
	tail int // bytes kept at the front of win
}

func (g *getackScanner) seen(p []byte) bool {
	k := len(getackText) - 1
	found := bytes.Contains(p, getackCmd)
	n := g.tail + copy(g.win[g.tail:g.tail+k], p)
	found = found || bytes.Contains(g.win[:n], getackCmd)
	if len(p) >= k {
		g.tail = copy(g.win[:], p[len(p)-k:])
	} else {
		g.tail = copy(g.win[:], g.win[max(0, n-k):n])
	}
	return found
}

// ackLoop sends REPLCONF ACK every second, at a GETACK, and in replicas
// mode whenever the replicas' acknowledged quorum moves.
func (l *Link) ackLoop(ctx context.Context, conn net.Conn, getack <-chan struct{}) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last := int64(-1)
	rewound := l.store.Rewound()
	for {
		var replicaAcks <-chan struct{}
		if l.cfg.AckMode == AckReplicas {
			replicaAcks = l.fan.AckChanged()
		}
		force := false
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			force = true
			if off := l.awaitStream.Load(); off >= 0 {
				// The stream has not started: repeat the full sync's ACK.
				if err := sendAck(conn, off); err != nil {
					conn.Close()
					return err
				}
				continue
			}
		case <-getack:
			// WAIT is waiting: make what is stored durable now rather than
			// at the next scheduled fsync. In replicas mode the replicas'
			// own ACKs, answering the same GETACK, then move the quorum.
			l.store.SyncNow()
			force = l.cfg.AckMode == AckStored
		case <-replicaAcks:
		case <-rewound:
			// The log was cut back (a failed fsync, or damage on disk):
			// the session ends and the next one PSYNCs from the new end.
			conn.Close()
			return backlog.ErrRewound
		}
		off, ok := l.ackOffset()
		if !ok || (!force && off <= last) {
			continue
		}
		if err := sendAck(conn, off); err != nil {
			conn.Close()
			return err
		}
		l.LastAck.note(off)
		last = off
	}
}

// ackOffset is what may be acknowledged upstream: what is durable under the
// fsync policy, and in replicas mode no more than the replicas' quorum has
// acknowledged. ok is false when the quorum is not met: then the proxy stays
// silent, so the master's WAIT and min-replicas-to-write see no replica.
func (l *Link) ackOffset() (int64, bool) {
	off := l.store.State().Durable - 1
	if l.cfg.AckMode != AckReplicas {
		return off, true
	}
	q, ok := l.fan.AckQuorum(l.cfg.AckQuorum)
	if !ok {
		return 0, false
	}
	return min(off, q), true
}

func sendAck(conn net.Conn, off int64) error {
	if _, err := conn.Write(resp.AppendCommand(nil, "REPLCONF", "ACK", strconv.FormatInt(off, 10))); err != nil {
		return fmt.Errorf("send REPLCONF ACK: %w", err)
	}
	return nil
}

// Ack is the last REPLCONF ACK sent upstream.
type Ack struct {
	Off atomic.Int64
	At  atomic.Int64 // unix nanoseconds; 0: none yet
}

func (a *Ack) note(off int64) {
	a.Off.Store(off)
	a.At.Store(time.Now().UnixNano())
}
