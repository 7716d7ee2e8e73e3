package resp

import "fmt"

const (
	// DefaultScanMaxBulk is Redis' default proto-max-bulk-len: the largest
	// argument a master accepts, hence the largest it can propagate.
	DefaultScanMaxBulk = 512 << 20

	// maxArgc matches Redis, which counts arguments in a C int.
	maxArgc = 1<<31 - 1

	headArgs   = 3  // arguments reported per command
	headArgMax = 32 // longest argument reported; longer ones are nil
)

// scanState is what the next byte of the stream must be.
type scanState uint8

const (
	stCommand   scanState = iota // '*'
	stArgc                       // a digit of the argument count, or '\r' after one
	stArgcLF                     // '\n'
	stBulk                       // '$'
	stBulkLen                    // a digit of the bulk length, or '\r' after one
	stBulkLenLF                  // '\n'
	stPayload                    // any byte, counted
	stPayloadCR                  // '\r'
	stPayloadLF                  // '\n'
	stBroken                     // nothing: the stream was malformed
)

// expectation names, for error messages, what a state accepts.
func expectation(st scanState) string {
	switch st {
	case stCommand:
		return "'*' starting a command"
	case stArgc:
		return "a digit of the argument count"
	case stBulk:
		return "'$' starting an argument"
	case stBulkLen:
		return "a digit of the bulk length"
	case stPayloadCR:
		return `'\r' ending a bulk payload`
	default:
		return `'\n'`
	}
}

// Scanner follows command boundaries in a Redis replication stream, which
// a master always writes as multibulk commands, fed in chunks of any size
// and split anywhere. Payloads are counted, never buffered, and steady
// state allocates nothing, so it can sit on a relay's hot path.
//
// The zero value is ready to use at a command boundary. A Scanner must not
// be copied once fed.
type Scanner struct {
	// MaxBulk is the largest bulk length accepted; zero means
	// DefaultScanMaxBulk. Raise it to follow a master configured with a
	// larger proto-max-bulk-len. It guards against garbage, not memory.
	MaxBulk int64

	fed     int64
	state   scanState
	num     int64 // the length being parsed
	digits  int   // digits of num so far
	argc    int64 // arguments of the current command
	argi    int64 // index of the current argument
	left    int64 // payload bytes of the current argument still to come
	err     error
	head    [headArgs][]byte
	headBuf [headArgs][headArgMax]byte
}

// Feed consumes p. For each command that completes inside p it calls fn,
// if not nil, with end, the stream offset just past the command's last
// byte (counting every byte ever fed), and head, the command's first
// min(argc, 3) arguments, where an argument longer than 32 bytes is nil.
// head and its contents are valid only during the call.
//
// A byte that cannot start or continue a multibulk command yields a
// *ProtocolError naming it and its offset; the Scanner then returns that
// error from every Feed.
func (s *Scanner) Feed(p []byte, fn func(end int64, head [][]byte)) error {
	if s.err != nil {
		return s.err
	}
	base := s.fed
	s.fed += int64(len(p))
	for i := 0; i < len(p); {
		if s.state == stPayload {
			i += s.skip(p[i:])
			continue
		}
		used, done := s.fastPath(p[i:])
		if used == 0 {
			var problem string
			if done, problem = s.step(p[i]); problem != "" {
				return s.fail(p[i], base+int64(i), problem)
			}
			used = 1
		}
		i += used
		if done && fn != nil {
			fn(base+int64(i), s.head[:min(s.argc, headArgs)])
		}
	}
	return nil
}

// Fed returns the number of bytes fed so far. Calls that return an error
// already held by the Scanner add nothing.
func (s *Scanner) Fed() int64 { return s.fed }

// Boundary reports whether the bytes fed so far end exactly where a
// command ends (or nothing was fed).
func (s *Scanner) Boundary() bool { return s.state == stCommand && s.err == nil }

// step advances over one byte outside a payload. It reports whether the
// byte completed a command, or else what is wrong with it.
func (s *Scanner) step(c byte) (done bool, problem string) {
	switch s.state {
	case stCommand:
		if c != '*' {
			return false, "expected " + expectation(stCommand)
		}
		s.startNumber(stArgc)
	case stArgc:
		if c == '\r' && s.digits > 0 {
			s.state = stArgcLF
			return false, ""
		}
		if c == '0' && s.digits == 0 {
			return false, "a command has at least one argument"
		}
		return false, s.digit(c, maxArgc)
	case stArgcLF:
		if c != '\n' {
			return false, "expected " + expectation(stArgcLF)
		}
		s.argc, s.argi = s.num, 0
		s.state = stBulk
	case stBulk:
		if c != '$' {
			return false, "expected " + expectation(stBulk)
		}
		s.startNumber(stBulkLen)
	case stBulkLen:
		if c == '\r' && s.digits > 0 {
			s.state = stBulkLenLF
			return false, ""
		}
		return false, s.digit(c, s.maxBulk())
	case stBulkLenLF:
		if c != '\n' {
			return false, "expected " + expectation(stBulkLenLF)
		}
		s.startPayload()
	case stPayloadCR:
		if c != '\r' {
			return false, "expected " + expectation(stPayloadCR)
		}
		s.state = stPayloadLF
	case stPayloadLF:
		if c != '\n' {
			return false, "expected " + expectation(stPayloadLF)
		}
		return s.endArg(), ""
	default:
		// Feed handles payloads itself and stops at the first error, so
		// only a bug in this file gets here.
		panic(fmt.Sprintf("resp: scanner stepped in state %d", s.state))
	}
	return false, ""
}

// fastPath takes a whole header line or payload terminator at the front
// of p in one go, which is most of the work for typical small arguments.
// It takes nothing (used 0) when the bytes are incomplete or anything is
// unusual, leaving step to go byte by byte and to name any error.
func (s *Scanner) fastPath(p []byte) (used int, done bool) {
	switch s.state {
	case stCommand:
		if n, used := scanHeader(p, '*', maxArgc); used > 0 && n > 0 {
			s.argc, s.argi = n, 0
			s.state = stBulk
			return used, false
		}
	case stBulk:
		if n, used := scanHeader(p, '$', s.maxBulk()); used > 0 {
			s.num = n
			s.startPayload()
			return used, false
		}
	case stPayloadCR:
		if len(p) >= 2 && p[0] == '\r' && p[1] == '\n' {
			return 2, s.endArg()
		}
	}
	return 0, false
}

// scanHeader parses a complete "<kind><digits>\r\n" at the front of p, with
// the same rules as the byte-by-byte path, and returns the number and the
// bytes it spans, or 0 bytes if it cannot.
func scanHeader(p []byte, kind byte, limit int64) (n int64, used int) {
	if len(p) < 4 || p[0] != kind || p[1] < '0' || p[1] > '9' || (p[1] == '0' && p[2] != '\r') {
		return 0, 0
	}
	for i := 1; i < len(p); i++ {
		c := p[i]
		if c < '0' || c > '9' {
			if c != '\r' || i+1 >= len(p) || p[i+1] != '\n' {
				return 0, 0
			}
			return n, i + 2
		}
		d := int64(c - '0')
		if n > (limit-d)/10 {
			return 0, 0
		}
		n = n*10 + d
	}
	return 0, 0
}

// endArg finishes an argument and reports whether it ended the command.
func (s *Scanner) endArg() bool {
	s.argi++
	if s.argi < s.argc {
		s.state = stBulk
		return false
	}
	s.state = stCommand
	return true
}

func (s *Scanner) startNumber(next scanState) {
	s.num, s.digits = 0, 0
	s.state = next
}

// digit adds c to the length being parsed, refusing leading zeros, which
// no master writes, and values over limit.
func (s *Scanner) digit(c byte, limit int64) string {
	if c < '0' || c > '9' {
		if s.digits == 0 {
			return "expected " + expectation(s.state)
		}
		return `expected a digit or '\r'`
	}
	if s.digits > 0 && s.num == 0 {
		return "leading zero in a length"
	}
	d := int64(c - '0')
	if s.num > (limit-d)/10 {
		return fmt.Sprintf("length over %d", limit)
	}
	s.num = s.num*10 + d
	s.digits++
	return ""
}

func (s *Scanner) maxBulk() int64 {
	if s.MaxBulk > 0 {
		return s.MaxBulk
	}
	return DefaultScanMaxBulk
}

// startPayload begins an argument of s.num bytes. Only short leading
// arguments are kept, in the Scanner's own arrays, which is what makes
// head free of allocation.
func (s *Scanner) startPayload() {
	s.left = s.num
	if s.argi < headArgs {
		s.head[s.argi] = nil
		if s.left <= headArgMax {
			s.head[s.argi] = s.headBuf[s.argi][:0]
		}
	}
	s.state = stPayload
	if s.left == 0 {
		s.state = stPayloadCR
	}
}

// skip counts payload bytes from the front of p, keeping those of a head
// argument, and returns how many it took.
func (s *Scanner) skip(p []byte) int {
	k := int(min(s.left, int64(len(p))))
	if s.argi < headArgs && s.head[s.argi] != nil {
		s.head[s.argi] = append(s.head[s.argi], p[:k]...)
	}
	s.left -= int64(k)
	if s.left == 0 {
		s.state = stPayloadCR
	}
	return k
}

func (s *Scanner) fail(c byte, offset int64, problem string) error {
	s.err = &ProtocolError{Msg: fmt.Sprintf("unexpected byte %q at stream offset %d: %s", c, offset, problem)}
	s.state = stBroken
	return s.err
}
