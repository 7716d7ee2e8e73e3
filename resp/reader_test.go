package resp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
)

// readAll reads commands until the first error and returns them as strings,
// which also checks that every command was usable before the next read.
func readAll(r *Reader) ([][]string, error) {
	var cmds [][]string
	for {
		args, err := r.ReadCommand()
		if err != nil {
			return cmds, err
		}
		if args == nil {
			return cmds, errors.New("ReadCommand returned a nil slice without error")
		}
		cmd := []string{}
		for _, a := range args {
			cmd = append(cmd, string(a))
		}
		cmds = append(cmds, cmd)
	}
}

// checkErr compares err with a wanted io error or a wanted ProtocolError
// message.
func checkErr(t *testing.T, err, wantErr error, wantProto string) {
	t.Helper()
	if wantProto != "" {
		var pe *ProtocolError
		if !errors.As(err, &pe) || pe.Msg != wantProto {
			t.Fatalf("error = %v, want protocol error %q", err, wantProto)
		}
		return
	}
	if !errors.Is(err, wantErr) {
		t.Fatalf("error = %v, want %v", err, wantErr)
	}
}

// bufSizes are the bufio sizes every reader case runs with: the smallest
// bufio allows, which splits every line and payload, and a usual one.
var bufSizes = []int{16, 4096}

func TestReadCommand(t *testing.T) {
	small := Limits{MaxBulk: 8, MaxArgs: 3, MaxInline: 20}
	tests := []struct {
		name      string
		in        string
		lim       Limits // zero fields take DefaultLimits values
		want      [][]string
		wantErr   error  // io error ending the input, when wantProto is empty
		wantProto string // ProtocolError message ending the input
	}{
		// Well-formed input.
		{name: "nothing", in: "", wantErr: io.EOF},
		{name: "multibulk", in: "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", want: [][]string{{"GET", "k"}}, wantErr: io.EOF},
		{name: "case kept", in: "*1\r\n$4\r\nping\r\n", want: [][]string{{"ping"}}, wantErr: io.EOF},
		{name: "binary payload", in: "*1\r\n$6\r\na\r\n\x00*\n\r\n", want: [][]string{{"a\r\n\x00*\n"}}, wantErr: io.EOF},
		{name: "empty bulk", in: "*2\r\n$0\r\n\r\n$1\r\nx\r\n", want: [][]string{{"", "x"}}, wantErr: io.EOF},
		{name: "zero count", in: "*0\r\n", want: [][]string{{}}, wantErr: io.EOF},
		{name: "null count", in: "*-1\r\n", want: [][]string{{}}, wantErr: io.EOF},
		{name: "inline crlf", in: "PING\r\n", want: [][]string{{"PING"}}, wantErr: io.EOF},
		{name: "inline lf", in: "REPLCONF ACK 123\n", want: [][]string{{"REPLCONF", "ACK", "123"}}, wantErr: io.EOF},
		{name: "inline blanks", in: " \tset  k\tv  \r\n", want: [][]string{{"set", "k", "v"}}, wantErr: io.EOF},
		{name: "inline binary", in: "a\x00b \xff\n", want: [][]string{{"a\x00b", "\xff"}}, wantErr: io.EOF},
		{name: "keepalive lf", in: "\n", want: [][]string{{}}, wantErr: io.EOF},
		{name: "keepalive crlf", in: "\r\n", want: [][]string{{}}, wantErr: io.EOF},
		{name: "blank line", in: "  \t\r\n", want: [][]string{{}}, wantErr: io.EOF},
		{
			name:    "pipelined",
			in:      "\n*1\r\n$4\r\nPING\r\n\nPING\r\n*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n$2\r\n10\r\n\n",
			want:    [][]string{{}, {"PING"}, {}, {"PING"}, {"REPLCONF", "ACK", "10"}, {}},
			wantErr: io.EOF,
		},
		{name: "limits exact", lim: small, in: "*3\r\n$8\r\n12345678\r\n$0\r\n\r\n$1\r\nx\r\n", want: [][]string{{"12345678", "", "x"}}, wantErr: io.EOF},
		{name: "inline exact", lim: small, in: strings.Repeat("a", 20) + "\r\n" + strings.Repeat("b", 20) + "\n", want: [][]string{{strings.Repeat("a", 20)}, {strings.Repeat("b", 20)}}, wantErr: io.EOF},

		// Truncated input.
		{name: "eof in inline", in: "PING", wantErr: io.ErrUnexpectedEOF},
		{name: "eof in count", in: "*1", wantErr: io.ErrUnexpectedEOF},
		{name: "eof after count", in: "*1\r\n", wantErr: io.ErrUnexpectedEOF},
		{name: "eof in bulk header", in: "*1\r\n$3", wantErr: io.ErrUnexpectedEOF},
		{name: "eof in payload", in: "*1\r\n$3\r\nab", wantErr: io.ErrUnexpectedEOF},
		{name: "eof before crlf", in: "*1\r\n$3\r\nabc", wantErr: io.ErrUnexpectedEOF},
		{name: "eof in crlf", in: "*1\r\n$3\r\nabc\r", wantErr: io.ErrUnexpectedEOF},
		{name: "eof before next arg", in: "*2\r\n$1\r\na\r\n", wantErr: io.ErrUnexpectedEOF},
		{name: "eof after good command", in: "*1\r\n$4\r\nPING\r\n*1\r\n", want: [][]string{{"PING"}}, wantErr: io.ErrUnexpectedEOF},

		// Malformed input.
		{name: "count not a number", in: "*x\r\n", wantProto: "invalid multibulk length"},
		{name: "count empty", in: "*\r\n", wantProto: "invalid multibulk length"},
		{name: "count plus", in: "*+1\r\n", wantProto: "invalid multibulk length"},
		{name: "count leading zero", in: "*01\r\n", wantProto: "invalid multibulk length"},
		{name: "count trailing junk", in: "*1 \r\n", wantProto: "invalid multibulk length"},
		{name: "count huge", in: "*99999999999999999999\r\n", wantProto: "invalid multibulk length"},
		{name: "count over MaxArgs", in: "*1025\r\n", wantProto: "invalid multibulk length"},
		{name: "count over small MaxArgs", lim: small, in: "*4\r\n", wantProto: "invalid multibulk length"},
		{name: "count bare lf", in: "*1\n$1\r\na\r\n", wantProto: "invalid multibulk length"},
		{name: "not a bulk", in: "*1\r\n:1\r\n", wantProto: `expected '$', got ':'`},
		{name: "empty line for bulk", in: "*1\r\n\r\n", wantProto: `expected '$', got '\r'`},
		{name: "bulk not a number", in: "*1\r\n$x\r\n", wantProto: "invalid bulk length"},
		{name: "bulk empty length", in: "*1\r\n$\r\n", wantProto: "invalid bulk length"},
		{name: "bulk null", in: "*1\r\n$-1\r\n", wantProto: "invalid bulk length"},
		{name: "bulk negative", in: "*1\r\n$-5\r\n", wantProto: "invalid bulk length"},
		{name: "bulk bare lf", in: "*1\r\n$1\na\r\n", wantProto: "invalid bulk length"},
		{name: "bulk huge", in: "*1\r\n$2000000000\r\n", wantProto: "invalid bulk length"},
		{name: "bulk over MaxBulk", in: "*1\r\n$524289\r\n", wantProto: "invalid bulk length"},
		{name: "bulk over small MaxBulk", lim: small, in: "*1\r\n$9\r\n123456789\r\n", wantProto: "invalid bulk length"},
		{name: "bulk overflow", in: "*1\r\n$99999999999\r\n", wantProto: "invalid bulk length"},
		{name: "payload too long", in: "*1\r\n$1\r\nab\r\n", wantProto: "bulk string not terminated by CRLF"},
		{name: "payload lf only", in: "*1\r\n$1\r\na\nX", wantProto: "bulk string not terminated by CRLF"},
		{name: "inline too long", lim: small, in: strings.Repeat("a", 21) + "\n", wantProto: "too big inline request"},
		{name: "inline too long crlf", lim: small, in: strings.Repeat("a", 21) + "\r\n", wantProto: "too big inline request"},
		{name: "inline never ends", lim: small, in: strings.Repeat("a", 100), wantProto: "too big inline request"},
		{name: "header too long", lim: small, in: "*1\r\n$" + strings.Repeat("1", 30) + "\r\n", wantProto: "too big count string"},
		{name: "error after good command", in: "PING\n*x\r\n", want: [][]string{{"PING"}}, wantProto: "invalid multibulk length"},
	}
	for _, tt := range tests {
		for _, size := range bufSizes {
			t.Run(fmt.Sprintf("%s/buf%d", tt.name, size), func(t *testing.T) {
				r := NewReader(bufio.NewReaderSize(strings.NewReader(tt.in), size), tt.lim)
				got, err := readAll(r)
				if len(got) != 0 || len(tt.want) != 0 {
					if !reflect.DeepEqual(got, tt.want) {
						t.Errorf("commands = %q, want %q", got, tt.want)
					}
				}
				checkErr(t, err, tt.wantErr, tt.wantProto)
			})
		}
	}
}

func TestNewReaderFillsZeroLimits(t *testing.T) {
	r := NewReader(bufio.NewReader(strings.NewReader("")), Limits{MaxArgs: 5})
	want := DefaultLimits()
	want.MaxArgs = 5
	if r.lim != want {
		t.Errorf("limits = %+v, want %+v", r.lim, want)
	}
}

func TestReadCommandKeepaliveIsEmptyNonNil(t *testing.T) {
	r := NewReader(bufio.NewReader(strings.NewReader("\n*0\r\n")), DefaultLimits())
	for range 2 {
		args, err := r.ReadCommand()
		if err != nil || args == nil || len(args) != 0 {
			t.Fatalf("ReadCommand = %q, %v; want an empty non-nil slice", args, err)
		}
	}
}

// A length the peer merely claims must cost nothing: memory follows the
// bytes that actually arrive.
func TestReadCommandClaimedLengthsDoNotAllocate(t *testing.T) {
	for _, in := range []string{
		"*1\r\n$524288\r\nabc",
		"*1024\r\n$1\r\na\r\n",
		"*1\r\n$2000000000\r\n",
		"*2000000000\r\n",
	} {
		r := NewReader(bufio.NewReaderSize(strings.NewReader(in), 16), DefaultLimits())
		if _, err := r.ReadCommand(); err == nil {
			t.Fatalf("%q: ReadCommand succeeded", in)
		}
		if cap(r.buf) > 1024 || cap(r.ends) > 1024 || cap(r.args) > 1024 {
			t.Errorf("%q: buffers grew to %d, %d, %d", in, cap(r.buf), cap(r.ends), cap(r.args))
		}
	}
}

func TestReadCommandReleasesLargeBuffer(t *testing.T) {
	big := strings.Repeat("v", 300<<10)
	in := AppendCommand(nil, "SET", "k", big)
	in = AppendCommand(in, "PING")
	r := NewReader(bufio.NewReader(bytes.NewReader(in)), DefaultLimits())
	args, err := r.ReadCommand()
	if err != nil || len(args) != 3 || string(args[2]) != big {
		t.Fatalf("first command: %d args, %v", len(args), err)
	}
	args, err = r.ReadCommand()
	if err != nil || len(args) != 1 || string(args[0]) != "PING" {
		t.Fatalf("second command = %q, %v", args, err)
	}
	if cap(r.buf) > retainCap {
		t.Errorf("buffer kept at %d bytes after a small command", cap(r.buf))
	}
}

func TestReadLine(t *testing.T) {
	small := Limits{MaxBulk: 8, MaxArgs: 3, MaxInline: 20}
	tests := []struct {
		name      string
		in        string
		lim       Limits
		want      []string
		wantErr   error
		wantProto string
	}{
		{name: "nothing", in: "", wantErr: io.EOF},
		{name: "ok", in: "+OK\r\n", want: []string{"+OK"}, wantErr: io.EOF},
		{name: "fullresync", in: "+FULLRESYNC 8de1787ba490483314a4d30f1c628bc5025eb761 2000\r\n", want: []string{"+FULLRESYNC 8de1787ba490483314a4d30f1c628bc5025eb761 2000"}, wantErr: io.EOF},
		{name: "eof mark", in: "$EOF:" + strings.Repeat("ab", 20) + "\r\n", want: []string{"$EOF:" + strings.Repeat("ab", 20)}, wantErr: io.EOF},
		{name: "error reply", in: "-NOAUTH Authentication required.\r\n", want: []string{"-NOAUTH Authentication required."}, wantErr: io.EOF},
		{name: "newlines while preparing", in: "\n\n+CONTINUE\r\n", want: []string{"", "", "+CONTINUE"}, wantErr: io.EOF},
		{name: "lf only", in: "+OK\n", want: []string{"+OK"}, wantErr: io.EOF},
		{name: "cr kept inside", in: "a\rb\r\n", want: []string{"a\rb"}, wantErr: io.EOF},
		{name: "exact limit", lim: small, in: strings.Repeat("x", 20) + "\r\n", want: []string{strings.Repeat("x", 20)}, wantErr: io.EOF},
		{name: "too long", lim: small, in: strings.Repeat("x", 21) + "\r\n", wantProto: "line too long"},
		{name: "never ends", lim: small, in: strings.Repeat("x", 1000), wantProto: "line too long"},
		{name: "truncated", in: "+OK", wantErr: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		for _, size := range bufSizes {
			t.Run(fmt.Sprintf("%s/buf%d", tt.name, size), func(t *testing.T) {
				r := NewReader(bufio.NewReaderSize(strings.NewReader(tt.in), size), tt.lim)
				var got []string
				var err error
				for {
					var line []byte
					if line, err = r.ReadLine(); err != nil {
						break
					}
					got = append(got, string(line))
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("lines = %q, want %q", got, tt.want)
				}
				checkErr(t, err, tt.wantErr, tt.wantProto)
			})
		}
	}
}

// After a reply line, the payload that follows is read from Bufio.
func TestReadLineThenBufio(t *testing.T) {
	r := NewReader(bufio.NewReaderSize(strings.NewReader("+FULLRESYNC id 0\r\n$5\r\nREDIS*1\r\n"), 16), DefaultLimits())
	for _, want := range []string{"+FULLRESYNC id 0", "$5"} {
		line, err := r.ReadLine()
		if err != nil || string(line) != want {
			t.Fatalf("ReadLine = %q, %v; want %q", line, err, want)
		}
	}
	payload := make([]byte, 5)
	if _, err := io.ReadFull(r.Bufio(), payload); err != nil || string(payload) != "REDIS" {
		t.Fatalf("payload = %q, %v", payload, err)
	}
	if _, err := r.ReadCommand(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("stream after payload: %v, want unexpected EOF", err)
	}
}

func TestParseInt(t *testing.T) {
	tests := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"7", 7, true}, {"-1", -1, true}, {"123456789012345678", 123456789012345678, true},
		{"", 0, false}, {"-", 0, false}, {"-0", 0, false}, {"01", 0, false}, {"+1", 0, false},
		{"1x", 0, false}, {" 1", 0, false}, {"1234567890123456789", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseInt([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseInt(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestProtocolErrorMessage(t *testing.T) {
	err := error(&ProtocolError{Msg: "invalid bulk length"})
	if got := err.Error(); got != "protocol error: invalid bulk length" {
		t.Errorf("Error() = %q", got)
	}
}

// setStream is a realistic client or replication workload: SET commands
// with 100-byte values.
func setStream(n int) []byte {
	value := strings.Repeat("v", 100)
	var b []byte
	for i := range n {
		b = AppendCommand(b, "SET", fmt.Sprintf("key:%08d", i), value)
	}
	return b
}

func BenchmarkReadCommand(b *testing.B) {
	stream := setStream(10000)
	src := bytes.NewReader(stream)
	br := bufio.NewReaderSize(src, 16<<10)
	r := NewReader(br, DefaultLimits())
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		src.Reset(stream)
		br.Reset(src)
		for {
			if _, err := r.ReadCommand(); err != nil {
				if err != io.EOF {
					b.Fatal(err)
				}
				break
			}
		}
	}
}

// Issue 10: before AUTH, Redis 7's limits (10 arguments, 16 KiB per bulk),
// worded as Redis words them; SetLimits lifts them after AUTH.
func TestUnauthenticatedLimits(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"*11\r\n", "unauthenticated multibulk length"},
		{"*1\r\n$16385\r\n", "unauthenticated bulk length"},
		{strings.Repeat("a", 17<<10) + "\r\n", "too big inline request"},
	} {
		r := NewReader(bufio.NewReader(strings.NewReader(c.in)), UnauthenticatedLimits())
		var pe *ProtocolError
		if _, err := r.ReadCommand(); !errors.As(err, &pe) || pe.Msg != c.want {
			t.Errorf("%.20q: %v, want %q", c.in, err, c.want)
		}
	}
	in := "*10\r\n" + strings.Repeat("$16384\r\n"+strings.Repeat("x", 16384)+"\r\n", 10) + "*11\r\n" + strings.Repeat("$1\r\nx\r\n", 11)
	r := NewReader(bufio.NewReader(strings.NewReader(in)), UnauthenticatedLimits())
	if args, err := r.ReadCommand(); err != nil || len(args) != 10 {
		t.Fatalf("at the limits: %d args, %v", len(args), err)
	}
	r.SetLimits(DefaultLimits())
	if args, err := r.ReadCommand(); err != nil || len(args) != 11 {
		t.Fatalf("after SetLimits: %d args, %v", len(args), err)
	}
}

// bigCommand is a client sending one multibulk command of MaxArgs bulks of
// MaxBulk bytes each, up to limit bytes; it counts what was read.
type bigCommand struct {
	pending []byte
	read    int64
	limit   int64
}

func (b *bigCommand) Read(p []byte) (int, error) {
	if b.read >= b.limit {
		return 0, io.EOF
	}
	if len(b.pending) == 0 {
		if b.read == 0 {
			b.pending = []byte("*1024\r\n")
		}
		bulk := DefaultLimits().MaxBulk
		b.pending = append(b.pending, fmt.Sprintf("$%d\r\n%s\r\n", bulk, bytes.Repeat([]byte("x"), int(bulk)))...)
	}
	n := copy(p, b.pending)
	b.pending = b.pending[n:]
	b.read += int64(n)
	return n, nil
}

// After AUTH the per-argument limits alone let one command hold 1024
// arguments of 512 KiB: half a gigabyte per connection, for a replica- or
// monitor-role user whose real commands are a few hundred bytes. The
// whole command is bounded too.
func TestCommandSizeIsBounded(t *testing.T) {
	src := &bigCommand{limit: 16 << 20}
	r := NewReader(bufio.NewReader(src), DefaultLimits())
	_, err := r.ReadCommand()
	checkErr(t, err, nil, "command too big")
	if src.read > 2*DefaultLimits().MaxCommand {
		t.Fatalf("read %d bytes before refusing the command", src.read)
	}
	// At the limit exactly, the command is read.
	lim := Limits{MaxBulk: 8, MaxCommand: 16}
	r = NewReader(bufio.NewReader(strings.NewReader("*2\r\n$8\r\n12345678\r\n$8\r\n12345678\r\n*3\r\n$8\r\n12345678\r\n$8\r\n12345678\r\n$1\r\nx\r\n")), lim)
	if args, err := r.ReadCommand(); err != nil || len(args) != 2 {
		t.Fatalf("at the limit: %q, %v", args, err)
	}
	_, err = r.ReadCommand()
	checkErr(t, err, nil, "command too big")
}
