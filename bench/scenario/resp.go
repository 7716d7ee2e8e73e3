package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// A few dozen lines of RESP are enough for INFO, PING and CONFIG, and keep
// the scenarios independent of the resp package, which is under change,
// and of a client library's retries and pools, which would blur timings.

const cmdTimeout = 5 * time.Second

type respConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRESP(network, addr string) (*respConn, error) {
	c, err := net.DialTimeout(network, addr, time.Second)
	if err != nil {
		return nil, err
	}
	return &respConn{c: c, br: bufio.NewReader(c)}, nil
}

func (rc *respConn) Close() error { return rc.c.Close() }

// replyError is a -ERR reply: the server answered, so it is not an I/O error.
type replyError string

func (e replyError) Error() string { return string(e) }

func appendCommand(dst []byte, args ...string) []byte {
	dst = append(dst, '*')
	dst = strconv.AppendInt(dst, int64(len(args)), 10)
	dst = append(dst, '\r', '\n')
	for _, a := range args {
		dst = append(dst, '$')
		dst = strconv.AppendInt(dst, int64(len(a)), 10)
		dst = append(dst, '\r', '\n')
		dst = append(dst, a...)
		dst = append(dst, '\r', '\n')
	}
	return dst
}

// do sends one command and returns its reply: a string for simple and bulk
// strings, an int64, a []any, or nil.
func (rc *respConn) do(args ...string) (any, error) { return rc.doWithin(cmdTimeout, args...) }

// doWithin is do with its own timeout, for a command known to be slow.
func (rc *respConn) doWithin(timeout time.Duration, args ...string) (any, error) {
	rc.c.SetDeadline(time.Now().Add(timeout))
	if _, err := rc.c.Write(appendCommand(nil, args...)); err != nil {
		return nil, err
	}
	return readReply(rc.br)
}

func readReply(br *bufio.Reader) (any, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return nil, replyError(body)
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readReply(br); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

func infoInt(m map[string]string, key string) int64 {
	n, err := strconv.ParseInt(m[key], 10, 64)
	if err != nil {
		return -1
	}
	return n
}
