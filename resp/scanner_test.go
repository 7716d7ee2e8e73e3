package resp

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// event is one command the Scanner reported, head flattened to a string so
// that results compare with ==; a nil argument shows as <nil>.
type event struct {
	end  int64
	head string
}

func formatHead[T []byte | string](args []T, isNil func(T) bool) string {
	parts := make([]string, len(args))
	for i, a := range args {
		parts[i] = "<nil>"
		if !isNil(a) {
			parts[i] = strconv.Quote(string(a))
		}
	}
	return strings.Join(parts, " ")
}

func headOf(head [][]byte) string {
	return formatHead(head, func(a []byte) bool { return a == nil })
}

// expectedHead is what the Scanner must report for args.
func expectedHead(args []string) string {
	args = args[:min(len(args), headArgs)]
	return formatHead(args, func(a string) bool { return len(a) > headArgMax })
}

// scanResult is everything a feed reveals, for comparing two feeds.
type scanResult struct {
	events   []event
	err      string
	fed      int64
	boundary bool
}

// scanChunks feeds chunks to a new Scanner and records what it reports.
// It checks on the way that head never outlives a call's promises.
func scanChunks(t testing.TB, maxBulk int64, chunks [][]byte) scanResult {
	t.Helper()
	s := &Scanner{MaxBulk: maxBulk}
	var res scanResult
	record := func(end int64, head [][]byte) {
		for _, a := range head {
			if len(a) > headArgMax {
				t.Fatalf("head argument of %d bytes", len(a))
			}
		}
		res.events = append(res.events, event{end, headOf(head)})
	}
	for _, c := range chunks {
		if err := s.Feed(c, record); err != nil {
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("Feed error %T, want *ProtocolError", err)
			}
			res.err = err.Error()
			break
		}
	}
	res.fed, res.boundary = s.Fed(), s.Boundary()
	if res.err != "" {
		res.fed = -1 // Fed counts only up to the failing call
	}
	return res
}

// buildStream encodes cmds and returns what a Scanner must report for them.
func buildStream(cmds [][]string) ([]byte, []event) {
	var stream []byte
	var events []event
	for _, c := range cmds {
		stream = AppendCommand(stream, c...)
		events = append(events, event{int64(len(stream)), expectedHead(c)})
	}
	return stream, events
}

// sampleCommands covers argument counts, empty and boundary-sized
// arguments, and payloads that look like protocol.
func sampleCommands() [][]string {
	cmds := [][]string{
		{"SELECT", "0"},
		{"PING"},
		{"SET", "k", "v"},
		{"REPLCONF", "GETACK", "*"},
		{"MULTI"},
		{"SET", "k\r\n*3\r\n$3", "*1\r\n$4\r\nPING\r\n"},
		{"EXEC"},
		{"", "", "", ""},
		{strings.Repeat("a", 32), strings.Repeat("b", 33), strings.Repeat("c", 31)},
		{"HSET", "h", "f1", "v1", "f2", "v2", "f3", "v3", "f4", "v4", "f5", "v5"},
		{"SET", "big", strings.Repeat("x", 1000)},
		{"DEL", strings.Repeat("k", 200)},
	}
	for i := range 20 {
		cmds = append(cmds, []string{"SET", fmt.Sprintf("key:%d", i), strings.Repeat("v", i*7)})
	}
	return cmds
}

func TestScannerWhole(t *testing.T) {
	stream, want := buildStream(sampleCommands())
	got := scanChunks(t, 0, [][]byte{stream})
	if got.err != "" || !reflect.DeepEqual(got.events, want) {
		t.Fatalf("got %v, %s\nwant %v", got.events, got.err, want)
	}
	if got.fed != int64(len(stream)) || !got.boundary {
		t.Errorf("Fed = %d, Boundary = %v after the whole stream", got.fed, got.boundary)
	}
}

// Splitting the stream anywhere must change nothing.
func TestScannerEverySplit(t *testing.T) {
	stream, want := buildStream(sampleCommands())
	for i := 0; i <= len(stream); i++ {
		got := scanChunks(t, 0, [][]byte{stream[:i], stream[i:]})
		if got.err != "" || !reflect.DeepEqual(got.events, want) {
			t.Fatalf("split at %d: got %v, %s", i, got.events, got.err)
		}
	}
}

func TestScannerByteAtATime(t *testing.T) {
	stream, want := buildStream(sampleCommands())
	ends := map[int64]bool{0: true}
	for _, e := range want {
		ends[e.end] = true
	}
	s := &Scanner{}
	var got []event
	for i := range stream {
		if s.Boundary() != ends[int64(i)] {
			t.Fatalf("Boundary() = %v after %d bytes", s.Boundary(), i)
		}
		err := s.Feed(stream[i:i+1], func(end int64, head [][]byte) {
			got = append(got, event{end, headOf(head)})
		})
		if err != nil {
			t.Fatal(err)
		}
		if s.Fed() != int64(i+1) {
			t.Fatalf("Fed() = %d after %d bytes", s.Fed(), i+1)
		}
	}
	if !reflect.DeepEqual(got, want) || !s.Boundary() {
		t.Fatalf("got %v, Boundary %v", got, s.Boundary())
	}
}

func TestScannerRandomChunks(t *testing.T) {
	stream, want := buildStream(sampleCommands())
	rng := rand.New(rand.NewPCG(1, 2))
	for range 500 {
		got := scanChunks(t, 0, randomChunks(rng, stream, 1+rng.IntN(300)))
		if got.err != "" || !reflect.DeepEqual(got.events, want) {
			t.Fatalf("got %v, %s", got.events, got.err)
		}
	}
}

// randomChunks cuts p into pieces of up to max bytes, empty ones included.
func randomChunks(rng *rand.Rand, p []byte, max int) [][]byte {
	var chunks [][]byte
	for len(p) > 0 {
		n := min(rng.IntN(max+1), len(p))
		chunks = append(chunks, p[:n])
		p = p[n:]
	}
	return chunks
}

func TestScannerLargeBulk(t *testing.T) {
	value := strings.Repeat("z", 1<<20)
	stream, want := buildStream([][]string{{"SET", "big", value}, {"PING"}})
	chunks := randomChunks(rand.New(rand.NewPCG(3, 4)), stream, 4096)
	got := scanChunks(t, 0, chunks)
	if got.err != "" || !reflect.DeepEqual(got.events, want) {
		t.Fatalf("got %v, %s", got.events, got.err)
	}
	if want[0].head != `"SET" "big" <nil>` {
		t.Fatalf("unexpected head %s", want[0].head)
	}
}

// Redis accepts values up to proto-max-bulk-len; the Scanner must follow
// them without buffering, and refuse longer ones unless told otherwise.
func TestScannerBulkLimit(t *testing.T) {
	header := "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$536870912\r\n"
	s := &Scanner{}
	if err := s.Feed([]byte(header), nil); err != nil {
		t.Fatalf("512 MiB value refused: %v", err)
	}
	chunk := make([]byte, 1<<20)
	for range 512 {
		if err := s.Feed(chunk, nil); err != nil {
			t.Fatal(err)
		}
	}
	ended := false
	if err := s.Feed([]byte("\r\n"), func(int64, [][]byte) { ended = true }); err != nil || !ended {
		t.Fatalf("end of 512 MiB value: %v, ended %v", err, ended)
	}

	over := []byte("*1\r\n$536870913\r\n")
	if err := (&Scanner{}).Feed(over, nil); err == nil {
		t.Error("value over 512 MiB accepted")
	}
	if err := (&Scanner{MaxBulk: 1 << 30}).Feed(over, nil); err != nil {
		t.Errorf("value under a raised MaxBulk refused: %v", err)
	}
}

func TestScannerErrors(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		offset int64
		char   string
	}{
		{"garbage first", "X", 0, `'X'`},
		{"garbage after command", "*1\r\n$4\r\nPING\r\nX", 14, `'X'`},
		{"inline newline", "*1\r\n$4\r\nPING\r\n\n", 14, `'\n'`},
		{"inline command", "PING\r\n", 0, `'P'`},
		{"zero count", "*0\r\n", 1, `'0'`},
		{"negative count", "*-1\r\n", 1, `'-'`},
		{"empty count", "*\r\n", 1, `'\r'`},
		{"count leading zero", "*01\r\n", 1, `'0'`},
		{"count bare lf", "*1\n", 2, `'\n'`},
		{"count cr without lf", "*1\rx", 3, `'x'`},
		{"count junk", "*1x\r\n", 2, `'x'`},
		{"count overflow", "*9999999999\r\n", 10, `'9'`},
		{"not a bulk", "*1\r\n:1\r\n", 4, `':'`},
		{"null bulk", "*1\r\n$-1\r\n", 5, `'-'`},
		{"empty bulk length", "*1\r\n$\r\n", 5, `'\r'`},
		{"bulk leading zero", "*1\r\n$01\r\nx\r\n", 6, `'1'`},
		{"bulk over limit", "*1\r\n$536870913\r\n", 13, `'3'`},
		{"bulk overflow", "*1\r\n$99999999999999999999\r\n", 13, `'9'`},
		{"payload too long", "*1\r\n$1\r\nab\r\n", 9, `'b'`},
		{"payload lf only", "*1\r\n$1\r\na\n", 9, `'\n'`},
		{"payload cr then junk", "*1\r\n$1\r\na\r\r", 10, `'\r'`},
		{"binary", "*1\r\n$1\r\na\r\n\x00", 11, `'\x00'`},
		{"second argument", "*2\r\n$1\r\na\r\n*", 11, `'*'`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Whole and byte by byte must fail the same way.
			for _, chunks := range [][][]byte{{[]byte(tt.in)}, bytesOf(tt.in)} {
				s := &Scanner{}
				var err error
				for _, c := range chunks {
					if err = s.Feed(c, nil); err != nil {
						break
					}
				}
				var pe *ProtocolError
				if !errors.As(err, &pe) {
					t.Fatalf("error = %v, want a *ProtocolError", err)
				}
				wantPrefix := fmt.Sprintf("unexpected byte %s at stream offset %d:", tt.char, tt.offset)
				if !strings.HasPrefix(pe.Msg, wantPrefix) {
					t.Fatalf("message %q, want prefix %q", pe.Msg, wantPrefix)
				}
				if s.Boundary() {
					t.Error("Boundary() true after an error")
				}
				if again := s.Feed([]byte("*1\r\n$4\r\nPING\r\n"), nil); again != err {
					t.Errorf("Feed after error = %v, want the same error", again)
				}
			}
		})
	}
}

func bytesOf(s string) [][]byte {
	chunks := make([][]byte, len(s))
	for i := range s {
		chunks[i] = []byte{s[i]}
	}
	return chunks
}

func TestScannerEmptyFeed(t *testing.T) {
	s := &Scanner{}
	if err := s.Feed(nil, nil); err != nil || s.Fed() != 0 || !s.Boundary() {
		t.Fatalf("empty feed: %v, Fed %d, Boundary %v", err, s.Fed(), s.Boundary())
	}
	if err := s.Feed([]byte("*1\r\n"), nil); err != nil || s.Boundary() {
		t.Fatalf("partial command: %v, Boundary %v", err, s.Boundary())
	}
}

func TestScannerSteadyStateDoesNotAllocate(t *testing.T) {
	stream := setStream(100)
	s := &Scanner{}
	var n int
	count := func(int64, [][]byte) { n++ }
	allocs := testing.AllocsPerRun(50, func() {
		for i := 0; i < len(stream); i += 1000 {
			if err := s.Feed(stream[i:min(i+1000, len(stream))], count); err != nil {
				t.Fatal(err)
			}
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per pass, want 0", allocs)
	}
	if n != 51*100 {
		t.Errorf("%d commands seen, want %d", n, 51*100)
	}
}

// refScan parses a whole stream the plain way, as an independent check of
// the Scanner's byte-at-a-time state machine. bad is the offset of the
// first byte that cannot belong to a replication stream, or -1 when the
// input is valid as far as it goes.
func refScan(p []byte, maxBulk int64) (events []event, bad int64) {
	r := &refParser{p: p, bad: -1}
	for r.pos < len(p) {
		e, ok := r.command(maxBulk)
		if !ok {
			break
		}
		events = append(events, e)
	}
	return events, int64(r.bad)
}

type refParser struct {
	p   []byte
	pos int
	bad int
}

// command parses one command; false means the input is bad or ends first.
func (r *refParser) command(maxBulk int64) (event, bool) {
	if !r.expect('*') {
		return event{}, false
	}
	argc, ok := r.number(maxArgc, false)
	if !ok {
		return event{}, false
	}
	var head []string
	for i := int64(0); i < argc; i++ {
		if !r.expect('$') {
			return event{}, false
		}
		n, ok := r.number(maxBulk, true)
		if !ok || int64(len(r.p)-r.pos) < n {
			return event{}, false
		}
		arg := string(r.p[r.pos : r.pos+int(n)])
		r.pos += int(n)
		if !r.expect('\r') || !r.expect('\n') {
			return event{}, false
		}
		if i < headArgs {
			head = append(head, arg)
		}
	}
	return event{int64(r.pos), expectedHead(head)}, true
}

func (r *refParser) expect(c byte) bool {
	if r.pos == len(r.p) {
		return false
	}
	if r.p[r.pos] != c {
		r.bad = r.pos
		return false
	}
	r.pos++
	return true
}

// number parses digits and "\r\n": no leading zero, at most limit, and
// zero only if allowed.
func (r *refParser) number(limit int64, zeroOK bool) (int64, bool) {
	start := r.pos
	var n int64
	for ; r.pos < len(r.p) && r.p[r.pos] >= '0' && r.p[r.pos] <= '9'; r.pos++ {
		d := int64(r.p[r.pos] - '0')
		leadingZero := r.pos > start && n == 0
		zeroCount := r.pos == start && d == 0 && !zeroOK
		if leadingZero || zeroCount || n*10+d > limit {
			r.bad = r.pos
			return 0, false
		}
		n = n*10 + d
	}
	if r.pos == len(r.p) {
		return 0, false
	}
	if r.pos == start {
		r.bad = r.pos
		return 0, false
	}
	return n, r.expect('\r') && r.expect('\n')
}

var offsetRE = regexp.MustCompile(`at stream offset (\d+):`)

// errOffset extracts the offset a Scanner error names, or -1 for none.
func errOffset(t testing.TB, msg string) int64 {
	if msg == "" {
		return -1
	}
	m := offsetRE.FindStringSubmatch(msg)
	if m == nil {
		t.Fatalf("error %q names no offset", msg)
	}
	off, _ := strconv.ParseInt(m[1], 10, 64)
	return off
}

func TestRefScanAgreesOnSamples(t *testing.T) {
	stream, want := buildStream(sampleCommands())
	events, bad := refScan(stream, DefaultScanMaxBulk)
	if bad != -1 || !reflect.DeepEqual(events, want) {
		t.Fatalf("reference parser: %v, bad %d", events, bad)
	}
}

func BenchmarkScanner(b *testing.B) {
	stream := setStream(10000)
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	var n int
	count := func(int64, [][]byte) { n++ }
	const chunk = 16 << 10
	var s Scanner
	for b.Loop() {
		s = Scanner{}
		for i := 0; i < len(stream); i += chunk {
			if err := s.Feed(stream[i:min(i+chunk, len(stream))], count); err != nil {
				b.Fatal(err)
			}
		}
	}
	if n == 0 {
		b.Fatal("no commands seen")
	}
}
