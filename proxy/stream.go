package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"

	"github.com/replproxy/replproxy/resp"
)

// getack is how a master asks for an ACK inside the stream. The stream is
// stored verbatim; this pattern only triggers an ACK, so a false match in a
// value costs one harmless extra ACK and no parser state can go wrong after
// resuming mid-command.
var getack = []byte("*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n")

// stream appends the master's bytes to the backlog exactly as received and
// acknowledges what is durable, every second and on GETACK.
func (l *Link) stream(ctx context.Context, conn net.Conn, br *bufio.Reader) error {
	ackCtx, stopAcks := context.WithCancel(ctx)
	defer stopAcks()
	ackErr := make(chan error, 1)
	go func() { ackErr <- l.ackEverySecond(ackCtx, conn) }()

	buf := make([]byte, 64<<10)
	carry := 0 // bytes of the previous read kept in front, so a split GETACK is still seen
	for {
		n, err := br.Read(buf[carry:])
		if n > 0 {
			data := buf[carry : carry+n]
			if aerr := l.store.Append(data); aerr != nil {
				return fmt.Errorf("store stream: %w", aerr)
			}
			if bytes.Contains(buf[:carry+n], getack) {
				if werr := l.sendAck(conn); werr != nil {
					return werr
				}
			}
			carry = keepTail(buf, carry+n, len(getack)-1)
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

func (l *Link) ackEverySecond(ctx context.Context, conn net.Conn) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := l.sendAck(conn); err != nil {
				conn.Close()
				return err
			}
		}
	}
}

// sendAck acknowledges the last byte that is durable under the fsync
// policy: never more than the proxy could give back after a crash.
func (l *Link) sendAck(conn net.Conn) error {
	off := l.store.State().Durable - 1
	if _, err := conn.Write(resp.AppendCommand(nil, "REPLCONF", "ACK", strconv.FormatInt(off, 10))); err != nil {
		return fmt.Errorf("send REPLCONF ACK: %w", err)
	}
	return nil
}
