package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/resp"
)

// getack is how a master asks for an ACK inside the stream. The stream is
// stored verbatim; this pattern only triggers an ACK, so a false match in a
// value costs one harmless extra ACK and no parser state can go wrong after
// resuming mid-command.
var getackCmd = []byte("*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n")

const upstreamReadBytes = 512 << 10

// stream appends the master's bytes to the backlog exactly as received;
// acknowledgements go from their own goroutine, so the reader never waits.
func (l *Link) stream(ctx context.Context, conn net.Conn, br *bufio.Reader) error {
	ackCtx, stopAcks := context.WithCancel(ctx)
	defer stopAcks()
	getack := make(chan struct{}, 1)
	ackErr := make(chan error, 1)
	go func() { ackErr <- l.ackLoop(ackCtx, conn, getack) }()

	// One read is one append: one index record, one wakeup of the senders
	// and one write per caught-up replica. A large buffer lets a read take
	// all the socket holds after a busy moment; a quiet link still gets
	// each small read at once.
	buf := make([]byte, upstreamReadBytes)
	carry := 0 // bytes of the previous read kept in front, so a split GETACK is still seen
	for {
		n, err := br.Read(buf[carry:])
		if n > 0 {
			l.awaitStream.Store(-1)
			if aerr := l.store.Append(buf[carry : carry+n]); aerr != nil {
				if !errors.Is(aerr, backlog.ErrRewound) {
					l.log.Error().Err(aerr).Msg("disk error storing the stream; the link stops and nothing more is acknowledged")
				}
				return fmt.Errorf("store stream: %w", aerr)
			}
			l.rawBytes.Add(int64(n))
			if bytes.Contains(buf[:carry+n], getackCmd) {
				select {
				case getack <- struct{}{}:
				default:
				}
			}
			carry = keepTail(buf, carry+n, len(getackCmd)-1)
		}
		if err != nil {
			select {
			case aerr := <-ackErr:
				if aerr != nil {
					return aerr
				}
			default:
			}
			if err == io.EOF {
				return fmt.Errorf("master closed the connection")
			}
			return fmt.Errorf("read stream: %w", err)
		}
	}
}

// keepTail moves the last k of the first n bytes of buf to its front.
func keepTail(buf []byte, n, k int) int {
	if n <= k {
		return n
	}
	copy(buf, buf[n-k:n])
	return k
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
		l.lastAck.note(off)
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
