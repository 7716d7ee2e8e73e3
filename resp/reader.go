// Package resp reads and writes the Redis serialization protocol (RESP2) as
// replication peers speak it: commands from replicas and clients, reply lines
// from a master.
package resp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// Limits bound what a Reader accepts from a peer, so that a claimed length
// never causes a large allocation.
type Limits struct {
	MaxBulk   int64 // largest bulk string accepted in a command
	MaxArgs   int   // most arguments in one multibulk command
	MaxInline int   // longest line: inline command, reply or header
}

// DefaultLimits fit what replicas, Sentinel and operators send to a master:
// small commands only. The data stream never goes through a Reader.
func DefaultLimits() Limits {
	return Limits{MaxBulk: 512 << 10, MaxArgs: 1024, MaxInline: 64 << 10}
}

// ProtocolError is malformed input from the peer. Like Redis, the caller
// replies "-ERR Protocol error: <Msg>" and closes the connection.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "protocol error: " + e.Msg }

func protoErr(format string, args ...any) error {
	return &ProtocolError{Msg: fmt.Sprintf(format, args...)}
}

// Reader reads commands or reply lines from a buffered connection.
type Reader struct {
	br   *bufio.Reader
	lim  Limits
	buf  []byte   // holds the arguments of the last command
	args [][]byte // reused slice header
}

// NewReader reads from br within lim.
func NewReader(br *bufio.Reader, lim Limits) *Reader {
	return &Reader{br: br, lim: lim}
}

// Bufio returns the underlying reader, for bytes that follow a reply line
// (an RDB payload, the replication stream).
func (r *Reader) Bufio() *bufio.Reader { return r.br }

// ReadLine returns one line without its line ending.
func (r *Reader) ReadLine() ([]byte, error) {
	line, err := r.readLine()
	if err != nil {
		return nil, err
	}
	return line, nil
}

// readLine reads up to "\n" within MaxInline and strips "\r\n" or "\n".
// The result aliases bufio's buffer when it fits, so it is valid only until
// the next read.
func (r *Reader) readLine() ([]byte, error) {
	line, err := r.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		line, err = r.readLongLine(line)
	}
	if err != nil {
		if errors.Is(err, io.EOF) && len(line) > 0 {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if len(line) > r.lim.MaxInline+2 {
		return nil, protoErr("too big inline request")
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// readLongLine continues a line longer than bufio's buffer, within MaxInline.
func (r *Reader) readLongLine(first []byte) ([]byte, error) {
	buf := append([]byte(nil), first...)
	for {
		if len(buf) > r.lim.MaxInline+2 {
			return nil, protoErr("too big inline request")
		}
		more, err := r.br.ReadSlice('\n')
		buf = append(buf, more...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			return buf, err
		}
	}
}

// ReadCommand reads one command, multibulk or inline. An empty inline line
// yields an empty, non-nil slice: replicas send bare newlines as keepalives.
// The returned arguments are valid until the next call.
func (r *Reader) ReadCommand() ([][]byte, error) {
	b, err := r.br.Peek(1)
	if err != nil {
		return nil, err
	}
	r.buf, r.args = r.buf[:0], r.args[:0]
	if b[0] == '*' {
		return r.readMultibulk()
	}
	return r.readInline()
}

func (r *Reader) readInline() ([][]byte, error) {
	line, err := r.readLine()
	if err != nil {
		return nil, err
	}
	r.buf = append(r.buf, line...)
	for _, f := range bytes.Fields(r.buf) {
		r.args = append(r.args, f)
	}
	if r.args == nil {
		r.args = [][]byte{}
	}
	return r.args, nil
}

func (r *Reader) readMultibulk() ([][]byte, error) {
	line, err := r.readLine()
	if err != nil {
		return nil, err
	}
	n, err := strconv.ParseInt(string(line[1:]), 10, 64)
	if err != nil || n > int64(r.lim.MaxArgs) {
		return nil, protoErr("invalid multibulk length")
	}
	if n <= 0 {
		return [][]byte{}, nil
	}
	ends := make([]int, 0, n)
	for i := int64(0); i < n; i++ {
		if err := r.readBulk(); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		ends = append(ends, len(r.buf))
	}
	start := 0
	for _, end := range ends {
		r.args = append(r.args, r.buf[start:end:end])
		start = end
	}
	return r.args, nil
}

// readBulk appends one "$len\r\n<payload>\r\n" to r.buf. The length is checked
// against MaxBulk before anything is allocated.
func (r *Reader) readBulk() error {
	line, err := r.readLine()
	if err != nil {
		return err
	}
	if len(line) == 0 || line[0] != '$' {
		got := "end of line"
		if len(line) > 0 {
			got = strconv.QuoteRune(rune(line[0]))
		}
		return protoErr("expected '$', got %s", got)
	}
	n, err := strconv.ParseInt(string(line[1:]), 10, 64)
	if err != nil || n < 0 || n > r.lim.MaxBulk {
		return protoErr("invalid bulk length")
	}
	start := len(r.buf)
	r.buf = slices.Grow(r.buf, int(n)+2)[:start+int(n)+2]
	if _, err := io.ReadFull(r.br, r.buf[start:]); err != nil {
		return err
	}
	if r.buf[len(r.buf)-2] != '\r' || r.buf[len(r.buf)-1] != '\n' {
		return protoErr("bulk string not terminated by CRLF")
	}
	r.buf = r.buf[:len(r.buf)-2]
	return nil
}
