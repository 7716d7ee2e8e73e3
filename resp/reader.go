// Package resp reads and writes the Redis serialization protocol (RESP2) as
// replication peers speak it: commands from replicas and clients, reply lines
// from a master, and the command boundaries of a replication stream.
package resp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// Limits bound what a Reader accepts from a peer, so that a claimed length
// never causes a large allocation.
type Limits struct {
	MaxBulk   int64 // largest bulk string accepted in a command
	MaxArgs   int   // most arguments in one multibulk command
	MaxInline int   // longest line: inline command, reply or header line
	// MaxCommand bounds the bytes of all of one command's arguments: the
	// per-argument limits alone would allow MaxArgs times MaxBulk.
	MaxCommand int64
	// Unauthenticated words the errors as Redis 7 does for a client that
	// has not authenticated yet, so the peer learns why it was cut off.
	Unauthenticated bool
}

// DefaultLimits fit what replicas, Sentinel and operators send to a master:
// small commands only. The replication stream never goes through a Reader.
func DefaultLimits() Limits {
	return Limits{MaxBulk: 512 << 10, MaxArgs: 1024, MaxInline: 64 << 10, MaxCommand: 1 << 20}
}

// UnauthenticatedLimits are Redis 7's limits before AUTH: a client that has
// not proved anything may not make the server buffer more than a few
// hundred kilobytes.
func UnauthenticatedLimits() Limits {
	// MaxCommand is what the other two allow: it only keeps the buffer's
	// growth from overshooting them, as its size counts against a budget.
	return Limits{MaxBulk: 16 << 10, MaxArgs: 10, MaxInline: 16 << 10, MaxCommand: 10 * 16 << 10, Unauthenticated: true}
}

// ProtocolError is malformed input from the peer. Like Redis, the caller
// replies "-ERR Protocol error: <Msg>" and closes the connection.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "protocol error: " + e.Msg }

func protoErr(format string, args ...any) error {
	return &ProtocolError{Msg: fmt.Sprintf(format, args...)}
}

// retainCap is the most buffer a Reader keeps between calls, so that one
// large command does not pin its memory for the life of a connection.
const retainCap = 64 << 10

// Reader reads commands or reply lines from a buffered connection. It is
// not safe for concurrent use.
type Reader struct {
	br   *bufio.Reader
	lim  Limits
	buf  []byte   // bytes of the last command's arguments, or the last line
	ends []int    // end of each argument in buf
	args [][]byte // views into buf, handed to the caller
	// hook is told buf's new capacity before buf grows (and after it
	// shrinks); an error refuses the growth and ends the read.
	hook func(capacity int) error
}

// NewReader reads from br within lim. A zero field of lim takes its
// DefaultLimits value, since a zero limit would refuse every command.
func NewReader(br *bufio.Reader, lim Limits) *Reader {
	// args starts non-nil so that a keepalive yields an empty, non-nil slice.
	return &Reader{br: br, lim: withDefaults(lim), args: make([][]byte, 0, 8)}
}

// SetLimits replaces the limits for the following commands, e.g. once the
// client has authenticated.
func (r *Reader) SetLimits(lim Limits) { r.lim = withDefaults(lim) }

// SetMemoryHook installs f, which is told the capacity of the Reader's
// buffer before it grows and after it is released, so that a caller can
// account for it against a budget shared by many connections; an error
// from f refuses the growth and is returned by the read. nil removes it.
func (r *Reader) SetMemoryHook(f func(capacity int) error) { r.hook = f }

// grow makes room in dst (always r.buf or a prefix of it) for k more
// bytes. It grows the buffer itself, rather than leaving it to append, so
// that the hook hears the exact capacity and can refuse it beforehand.
func (r *Reader) grow(dst []byte, k int) ([]byte, error) {
	need := len(dst) + k
	if need <= cap(dst) {
		return dst, nil
	}
	// Doubling, but never past what the limits let one command hold.
	ceiling := int(r.lim.MaxCommand) + r.lim.MaxInline + 2
	newCap := max(need, min(2*cap(dst), ceiling))
	if r.hook != nil {
		if err := r.hook(newCap); err != nil {
			return dst, err
		}
	}
	nb := make([]byte, len(dst), newCap)
	copy(nb, dst)
	return nb, nil
}

func withDefaults(lim Limits) Limits {
	def := DefaultLimits()
	if lim.MaxBulk <= 0 {
		lim.MaxBulk = def.MaxBulk
	}
	if lim.MaxArgs <= 0 {
		lim.MaxArgs = def.MaxArgs
	}
	if lim.MaxInline <= 0 {
		lim.MaxInline = def.MaxInline
	}
	if lim.MaxCommand <= 0 {
		lim.MaxCommand = def.MaxCommand
	}
	return lim
}

// Bufio returns the underlying reader, for the bytes that follow a reply
// line (an RDB payload, the replication stream).
func (r *Reader) Bufio() *bufio.Reader { return r.br }

// ReadLine returns one line without its "\r\n" or "\n". A line longer than
// MaxInline is a ProtocolError. The result is valid until the next call to
// ReadLine or ReadCommand.
func (r *Reader) ReadLine() ([]byte, error) {
	r.reset()
	line, err := r.appendLine(r.buf, "line too long")
	if err != nil {
		return nil, err
	}
	r.buf = line
	return trimEOL(line), nil
}

// ReadCommand reads one command, multibulk or inline; the first byte
// decides, as in Redis. An empty line, "*0" or "*-1" yields an empty,
// non-nil slice: replicas send bare newlines as keepalives.
//
// The returned arguments alias a buffer that the next call to ReadCommand
// or ReadLine reuses; copy what must outlive it. Errors from the connection
// are returned as they are: io.EOF only between commands,
// io.ErrUnexpectedEOF inside one.
func (r *Reader) ReadCommand() ([][]byte, error) {
	r.reset()
	first, err := r.br.Peek(1)
	if err != nil {
		return nil, err
	}
	if first[0] == '*' {
		args, err := r.readMultibulk()
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return args, err
	}
	return r.readInline()
}

func (r *Reader) reset() {
	if cap(r.buf) > retainCap {
		r.buf = nil
		if r.hook != nil {
			r.hook(0) // a release is never refused
		}
	}
	r.buf, r.ends, r.args = r.buf[:0], r.ends[:0], r.args[:0]
}

// readInline splits one line on blanks. Quoting is not supported: replicas
// and tools only send plain words inline.
func (r *Reader) readInline() ([][]byte, error) {
	line, err := r.appendLine(r.buf, "too big inline request")
	if err != nil {
		return nil, err
	}
	r.buf = line
	line = trimEOL(line)
	for i := 0; i < len(line); {
		for i < len(line) && isBlank(line[i]) {
			i++
		}
		start := i
		for i < len(line) && !isBlank(line[i]) {
			i++
		}
		if i > start {
			// The line's length bounds its memory, not its arguments: a
			// command of many one-byte words costs a slice header each.
			if len(r.args) >= r.lim.MaxArgs {
				if r.lim.Unauthenticated {
					return nil, protoErr("unauthenticated inline request: too many arguments")
				}
				return nil, protoErr("too many arguments in inline request")
			}
			r.args = append(r.args, line[start:i:i])
		}
	}
	return r.args, nil
}

func isBlank(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'
}

func (r *Reader) readMultibulk() ([][]byte, error) {
	n, err := r.readHeader('*', "invalid multibulk length")
	if err != nil {
		return nil, err
	}
	// Like Redis, any count below one is an empty command.
	if n > int64(r.lim.MaxArgs) {
		if r.lim.Unauthenticated {
			return nil, protoErr("unauthenticated multibulk length")
		}
		return nil, protoErr("invalid multibulk length")
	}
	for i := int64(0); i < n; i++ {
		if err := r.readBulk(); err != nil {
			return nil, err
		}
		r.ends = append(r.ends, len(r.buf))
	}
	// The views are taken only now because appending may move buf.
	start := 0
	for _, end := range r.ends {
		r.args = append(r.args, r.buf[start:end:end])
		start = end
	}
	return r.args, nil
}

// readBulk appends one "$len\r\n<payload>\r\n" payload to r.buf.
func (r *Reader) readBulk() error {
	n, err := r.readHeader('$', "invalid bulk length")
	if err != nil {
		return err
	}
	if n < 0 || n > r.lim.MaxBulk {
		if n > 0 && r.lim.Unauthenticated {
			return protoErr("unauthenticated bulk length")
		}
		return protoErr("invalid bulk length")
	}
	if int64(len(r.buf))+n > r.lim.MaxCommand {
		return protoErr("command too big")
	}
	if err := r.appendPayload(int(n)); err != nil {
		return err
	}
	return r.expectCRLF()
}

// readHeader reads a "<kind><integer>\r\n" line. The line is appended to
// r.buf only while it is parsed.
func (r *Reader) readHeader(kind byte, invalid string) (int64, error) {
	start := len(r.buf)
	line, err := r.appendLine(r.buf, "too big count string")
	if err != nil {
		return 0, err
	}
	r.buf = line[:start]
	line = line[start:]
	if line[0] != kind {
		return 0, protoErr("expected %q, got %q", kind, line[0])
	}
	// Headers need "\r\n": a bare "\n" there means the stream is off track.
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return 0, protoErr("%s", invalid)
	}
	n, ok := parseInt(line[1 : len(line)-2])
	if !ok {
		return 0, protoErr("%s", invalid)
	}
	return n, nil
}

// appendPayload copies n bytes to r.buf as they arrive, so memory follows
// what the peer actually sent rather than what it claimed.
func (r *Reader) appendPayload(n int) error {
	for n > 0 {
		if r.br.Buffered() == 0 {
			if _, err := r.br.Peek(1); err != nil {
				return err
			}
		}
		k := min(n, r.br.Buffered())
		chunk, err := r.br.Peek(k)
		if err != nil {
			return err
		}
		if r.buf, err = r.grow(r.buf, k); err != nil {
			return err
		}
		r.buf = append(r.buf, chunk...)
		if _, err := r.br.Discard(k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func (r *Reader) expectCRLF() error {
	crlf, err := r.br.Peek(2)
	if err != nil {
		return err
	}
	if crlf[0] != '\r' || crlf[1] != '\n' {
		return protoErr("bulk string not terminated by CRLF")
	}
	_, err = r.br.Discard(2)
	return err
}

// appendLine appends one line, its "\n" included, to dst. It gives up as
// soon as the line cannot fit MaxInline, so a peer that never sends a
// newline costs at most MaxInline plus one bufio buffer.
func (r *Reader) appendLine(dst []byte, tooLong string) ([]byte, error) {
	start := len(dst)
	for {
		frag, err := r.br.ReadSlice('\n')
		if len(dst)-start+len(frag) > r.lim.MaxInline+2 {
			return dst, protoErr("%s", tooLong)
		}
		var gerr error
		if dst, gerr = r.grow(dst, len(frag)); gerr != nil {
			return dst, gerr
		}
		dst = append(dst, frag...)
		switch {
		case err == nil:
			if len(trimEOL(dst[start:])) > r.lim.MaxInline {
				return dst, protoErr("%s", tooLong)
			}
			return dst, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(dst) > start:
			return dst, io.ErrUnexpectedEOF
		default:
			return dst, err
		}
	}
}

// trimEOL strips a trailing "\n" or "\r\n".
func trimEOL(line []byte) []byte {
	n := len(line)
	if n > 0 && line[n-1] == '\n' {
		n--
	}
	if n > 0 && line[n-1] == '\r' {
		n--
	}
	return line[:n]
}

// parseInt accepts what Redis' string2ll accepts for lengths: an optional
// minus sign and decimal digits without leading zeros. Unlike strconv it
// rejects "+1" and "007" and does not allocate on error. Numbers beyond 18
// digits are refused; no real length comes near that.
func parseInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 18 || (b[0] == '0' && (len(b) > 1 || neg)) {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		n = -n
	}
	return n, true
}
