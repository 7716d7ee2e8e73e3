package fanout

import (
	"bytes"
	"fmt"
	"strconv"
)

// commandScanner follows a replication stream, written to it from a known
// command boundary on, and keeps where the last whole unit (a command, or
// a MULTI ... EXEC block) ended and the database selected there. The proxy
// stores the stream as its reads bring it, so the log's end can fall
// inside a command; a stream handed out from "now" must start at such a
// boundary, as a master's own offset always is.
type commandScanner struct {
	off      int64 // offset of the next byte written
	boundary int64 // offset where the last whole unit ended
	db       int64 // database selected at boundary
	curDB    int64 // database selected after the last whole command
	inMulti  bool

	line  []byte // the header line being read
	left  int    // arguments left in the command being read
	skip  int64  // bytes of the argument (with its CRLF) still to read
	arg   int    // index of the argument being read
	value []byte // the argument's first bytes, kept for the first two
	name  []byte // the command's name, upper-cased
	first []byte // the command's first argument
	// onCommand, if set, is called with each whole command's upper-cased
	// name and the offset right after it.
	onCommand func(name []byte, end int64)
}

// scanKeep is how much of an argument is kept: enough for a command's
// name and SELECT's database, with its CRLF.
const scanKeep = 34

func newCommandScanner(from, db int64) *commandScanner {
	return &commandScanner{off: from, boundary: from, db: db, curDB: db}
}

// Write takes the stream's next bytes; an error means they are no stream
// of RESP arrays of bulk strings.
func (s *commandScanner) Write(p []byte) (int, error) {
	for i := 0; i < len(p); {
		if s.skip > 0 {
			n := int(min(s.skip, int64(len(p)-i)))
			if s.arg < 2 && len(s.value) < scanKeep {
				s.value = append(s.value, p[i:i+min(n, scanKeep-len(s.value))]...)
			}
			i += n
			s.off += int64(n)
			if s.skip -= int64(n); s.skip == 0 {
				s.argDone()
			}
			continue
		}
		c := p[i]
		i++
		s.off++
		s.line = append(s.line, c)
		if c != '\n' {
			if len(s.line) > 32 {
				return i, fmt.Errorf("offset %d: a header line longer than 32 bytes", s.off)
			}
			continue
		}
		if err := s.header(); err != nil {
			return i, err
		}
		s.line = s.line[:0]
	}
	return len(p), nil
}

func (s *commandScanner) header() error {
	line, ok := bytes.CutSuffix(s.line, []byte("\r\n"))
	want := byte('$')
	if s.left == 0 {
		want = '*'
	}
	if !ok || len(line) < 2 || line[0] != want {
		return fmt.Errorf("offset %d: %q where a %q header belongs", s.off, s.line, want)
	}
	n, err := strconv.ParseInt(string(line[1:]), 10, 64)
	if err != nil || n < 0 || n > 1<<40 || (want == '*' && n == 0) {
		return fmt.Errorf("offset %d: bad length in %q", s.off, s.line)
	}
	if want == '*' {
		s.left, s.arg = int(n), 0
		s.name, s.first = nil, nil
		return nil
	}
	s.skip, s.value = n+2, s.value[:0]
	return nil
}

func (s *commandScanner) argDone() {
	v, _ := bytes.CutSuffix(s.value, []byte("\r\n"))
	switch s.arg {
	case 0:
		s.name = bytes.ToUpper(v)
	case 1:
		s.first = append(s.first[:0], v...)
	}
	s.arg++
	if s.left--; s.left == 0 {
		s.commandDone()
	}
}

func (s *commandScanner) commandDone() {
	if s.onCommand != nil {
		s.onCommand(s.name, s.off)
	}
	switch string(s.name) {
	case "MULTI":
		s.inMulti = true
	case "EXEC", "DISCARD":
		s.inMulti = false
	case "SELECT":
		if db, err := strconv.ParseInt(string(s.first), 10, 64); err == nil {
			s.curDB = db
		}
	}
	if !s.inMulti {
		s.boundary, s.db = s.off, s.curDB
	}
}
