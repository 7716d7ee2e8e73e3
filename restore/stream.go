// Package restore rebuilds a Redis dataset at a past point from a data
// dir's kept snapshots and backlog (point-in-time recovery), and exports
// ranges of the stream as AOF-style RESP files.
package restore

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// command is one command of the replication stream, with its exact bytes
// and the offsets they occupy: [start, end).
type command struct {
	start, end int64
	raw        []byte
	args       [][]byte
}

func (c command) name() string { return strings.ToUpper(string(c.args[0])) }

// replayed says whether the command changes data, or at least the state a
// later command depends on (SELECT). PING and REPLCONF GETACK are the
// master's talk to its replica and go nowhere.
func (c command) replayed() bool {
	switch c.name() {
	case "PING", "REPLCONF":
		return false
	}
	return true
}

// unit is what is replayed or skipped as a whole: one command, or a
// MULTI ... EXEC block, so no target ever lands inside a transaction.
type unit struct {
	start, end int64
	cmds       []command
}

// lastByte is the offset of the unit's last byte, as Redis counts offsets.
func (u unit) lastByte() int64 { return u.end - 1 }

// errIncomplete means the stream ended inside a command or a transaction:
// the bytes read so far form no whole unit.
var errIncomplete = errors.New("stream ends inside a command or a MULTI/EXEC block")

const maxBulk = 512 << 20 // Redis' proto-max-bulk-len default

// parser splits a replication stream into units. The stream is what a
// master sends its replicas: RESP arrays of bulk strings.
type parser struct {
	br  *bufio.Reader
	off int64
}

func newParser(r io.Reader, off int64) *parser {
	return &parser{br: bufio.NewReaderSize(r, 1<<20), off: off}
}

// next returns the next whole unit; io.EOF at a clean end, errIncomplete
// when the stream stops inside one.
func (p *parser) next() (unit, error) {
	c, err := p.command()
	if err != nil {
		return unit{}, err
	}
	u := unit{start: c.start, end: c.end, cmds: []command{c}}
	if c.name() != "MULTI" {
		return u, nil
	}
	for {
		c, err := p.command()
		if errors.Is(err, io.EOF) {
			return unit{}, errIncomplete
		}
		if err != nil {
			return unit{}, err
		}
		u.cmds, u.end = append(u.cmds, c), c.end
		if n := c.name(); n == "EXEC" || n == "DISCARD" {
			return u, nil
		}
	}
}

func (p *parser) command() (command, error) {
	c := command{start: p.off}
	line, err := p.line(&c)
	if errors.Is(err, io.EOF) && len(c.raw) == 0 {
		return c, io.EOF
	}
	if err != nil {
		return c, err
	}
	if len(line) < 2 || line[0] != '*' {
		return c, fmt.Errorf("offset %d: stream is not a RESP array (%q)", c.start, truncate(line))
	}
	n, err := strconv.Atoi(string(line[1:]))
	if err != nil || n < 1 || n > 1<<20 {
		return c, fmt.Errorf("offset %d: bad array length %q", c.start, truncate(line))
	}
	spans := make([][2]int, 0, n)
	for range n {
		line, err := p.line(&c)
		if err != nil {
			return c, err
		}
		if len(line) < 2 || line[0] != '$' {
			return c, fmt.Errorf("offset %d: command argument is not a bulk string (%q)", c.start, truncate(line))
		}
		size, err := strconv.Atoi(string(line[1:]))
		if err != nil || size < 0 || size > maxBulk {
			return c, fmt.Errorf("offset %d: bad bulk length %q", c.start, truncate(line))
		}
		at := len(c.raw)
		c.raw = append(c.raw, make([]byte, size+2)...)
		if _, err := io.ReadFull(p.br, c.raw[at:]); err != nil {
			return c, incomplete(err)
		}
		if !bytes.HasSuffix(c.raw, []byte("\r\n")) {
			return c, fmt.Errorf("offset %d: bulk string not ended by CRLF", c.start)
		}
		spans = append(spans, [2]int{at, at + size})
	}
	for _, s := range spans {
		c.args = append(c.args, c.raw[s[0]:s[1]])
	}
	p.off += int64(len(c.raw))
	c.end = p.off
	return c, nil
}

// line appends the next CRLF-terminated line to c.raw and returns it
// without its CRLF.
func (p *parser) line(c *command) ([]byte, error) {
	b, err := p.br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, fmt.Errorf("offset %d: header line too long", c.start)
	}
	c.raw = append(c.raw, b...)
	if err != nil {
		if len(c.raw) > 0 {
			return nil, incomplete(err)
		}
		return nil, err
	}
	return bytes.TrimSuffix(b[:len(b)-1], []byte("\r")), nil
}

func incomplete(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errIncomplete
	}
	return err
}

func truncate(b []byte) string {
	if len(b) > 32 {
		return string(b[:32]) + "..."
	}
	return string(b)
}

// pattern matches commands: its words, with Redis-style globs (* ? [...]),
// must match the command's first words; the command name is matched
// without regard to case. "FLUSHALL" matches FLUSHALL and FLUSHALL ASYNC,
// "DEL user:*" a DEL whose first key starts with user:.
type pattern []string

func parsePattern(s string) (pattern, error) {
	words := strings.Fields(s)
	if len(words) == 0 {
		return nil, errors.New("empty command pattern")
	}
	words[0] = strings.ToUpper(words[0])
	return pattern(words), nil
}

func (p pattern) matches(c command) bool {
	if len(c.args) < len(p) {
		return false
	}
	if !glob(p[0], c.name()) {
		return false
	}
	for i, w := range p[1:] {
		if !glob(w, string(c.args[i+1])) {
			return false
		}
	}
	return true
}

// matches says whether any command of the unit matches.
func (p pattern) matchesUnit(u unit) bool {
	for _, c := range u.cmds {
		if p.matches(c) {
			return true
		}
	}
	return false
}

// glob matches s against a pattern with *, ?, [set] and \ escapes.
func glob(pat, s string) bool {
	for len(pat) > 0 {
		switch pat[0] {
		case '*':
			for i := len(s); i >= 0; i-- {
				if glob(pat[1:], s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if len(s) == 0 {
				return false
			}
			pat, s = pat[1:], s[1:]
		case '[':
			end := strings.IndexByte(pat[1:], ']')
			if end < 0 || len(s) == 0 || !inSet(pat[1:end+1], s[0]) {
				return false
			}
			pat, s = pat[end+2:], s[1:]
		case '\\':
			if len(pat) > 1 {
				pat = pat[1:]
			}
			fallthrough
		default:
			if len(s) == 0 || s[0] != pat[0] {
				return false
			}
			pat, s = pat[1:], s[1:]
		}
	}
	return len(s) == 0
}

func inSet(set string, c byte) bool {
	negate := strings.HasPrefix(set, "^")
	if negate {
		set = set[1:]
	}
	found := false
	for i := 0; i < len(set); i++ {
		if i+2 < len(set) && set[i+1] == '-' {
			found = found || (set[i] <= c && c <= set[i+2])
			i += 2
			continue
		}
		found = found || set[i] == c
	}
	return found != negate
}
