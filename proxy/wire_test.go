package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/resp"
)

// wire is a raw RESP connection, for tests that must see exact replies or
// send bytes no client library would.
type wire struct {
	net.Conn
	br *bufio.Reader
}

func dialWire(addr string) (*wire, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	return newWire(c), nil
}

func newWire(c net.Conn) *wire { return &wire{Conn: c, br: bufio.NewReader(c)} }

func (w *wire) do(args ...string) (string, error) {
	return w.send(resp.AppendCommand(nil, args...))
}

func (w *wire) send(raw []byte) (string, error) {
	w.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := w.Write(raw); err != nil {
		return "", err
	}
	return readReply(w.br)
}

func roundTrip(c net.Conn, args ...string) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(resp.AppendCommand(nil, args...)); err != nil {
		return "", err
	}
	return readReply(bufio.NewReader(c))
}

// readReply renders one reply as text: a line as it is, a bulk as its
// payload, an array as its elements joined by newlines.
func readReply(br *bufio.Reader) (string, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("empty reply line")
	}
	switch line[0] {
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "(nil)", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, _ := strconv.Atoi(line[1:])
		parts := make([]string, 0, n)
		for i := 0; i < n; i++ {
			p, err := readReply(br)
			if err != nil {
				return "", err
			}
			parts = append(parts, p)
		}
		return strings.Join(parts, "\n"), nil
	}
	return line, nil
}
