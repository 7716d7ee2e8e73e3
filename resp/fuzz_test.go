package resp

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// fuzzSeeds are inputs worth starting from for both fuzzers: valid
// commands, every kind of malformation, and lengths far beyond the input.
var fuzzSeeds = []string{
	"",
	"\n",
	"\r\n",
	"PING\r\n",
	"REPLCONF ACK 100\n",
	"*1\r\n$4\r\nPING\r\n",
	"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
	"*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n$1\r\n*\r\n",
	"*2\r\n$0\r\n\r\n$2\r\n\r\n\r\n",
	"*0\r\n",
	"*-1\r\n",
	"*1\r\n$99999999999\r\n",
	"*1\r\n$2000000000\r\n",
	"*1\r\n$524288\r\nabc",
	"*99999999\r\n",
	"*2000000000\r\n$1\r\na\r\n",
	"*99999999999999999999999\r\n",
	"*1\r\n$-1\r\n",
	"*1\r\n$01\r\na\r\n",
	"*+1\r\n$1\r\na\r\n",
	"*1\n$1\na\n",
	"*1\r\n$1\r\nab\r\n",
	"*1\r\n$1\r\na",
	"*1\r\n:1\r\n",
	"*",
	"$",
	"+OK\r\n",
	"-ERR x\r\n",
	"\x00\xff\xfe*\r\n$",
	"SET k " + strings.Repeat("v", 300) + "\r\n",
	strings.Repeat("a", 200),
	"\t \t\r\n  \n",
	// Inline commands with more words than fuzzLimits' 8 arguments.
	"AUTH a b c d e f g h i j k\r\n",
	strings.Repeat("a ", 60) + "\r\n",
	"PING\r\n" + strings.Repeat(" x", 9) + "\n",
}

// fuzzLimits are small so the fuzzer reaches every limit quickly.
var fuzzLimits = Limits{MaxBulk: 64, MaxArgs: 8, MaxInline: 128}

// splitArgs turns fuzz bytes into a command: 0x00 separates arguments, so
// arguments hold any other byte, CR, LF, '*' and '$' included.
func splitArgs(data []byte) []string {
	return strings.Split(string(data), "\x00")
}

// splitCommands turns fuzz bytes into commands: 0x01 separates them.

func FuzzReadCommand(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkReaderOn(t, data, fuzzLimits, 16)
		checkReaderOn(t, data, DefaultLimits(), 4096)
		checkRoundTrip(t, splitArgs(data))
	})
}

// checkReaderOn reads arbitrary data to the end. Whatever it holds, the
// reader must stop with an expected error, respect lim, and hold memory in
// proportion to the input, never to a length the input claims.
func checkReaderOn(t *testing.T, data []byte, lim Limits, bufSize int) {
	r := NewReader(bufio.NewReaderSize(bytes.NewReader(data), bufSize), lim)
	// The memory hook must hear the buffer's capacity exactly.
	heard := 0
	r.SetMemoryHook(func(n int) error { heard = n; return nil })
	for calls := 0; ; calls++ {
		if calls > len(data) {
			t.Fatalf("%d commands from %d bytes", calls, len(data))
		}
		args, err := r.ReadCommand()
		if limit := 3*len(data) + 64; cap(r.buf) > limit || cap(r.ends) > limit || cap(r.args) > limit {
			t.Fatalf("buffers of %d, %d, %d entries for %d input bytes",
				cap(r.buf), cap(r.ends), cap(r.args), len(data))
		}
		if err != nil {
			var pe *ProtocolError
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.As(err, &pe) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if args == nil {
			t.Fatal("nil args without error")
		}
		if heard != cap(r.buf) {
			t.Fatalf("the memory hook heard %d, the buffer holds %d", heard, cap(r.buf))
		}
		// Inline commands too: a line of one-byte words must not carry
		// more arguments than a multibulk command may.
		if len(args) > lim.MaxArgs {
			t.Fatalf("%d args over the limits", len(args))
		}
		for _, a := range args {
			if int64(len(a)) > max(lim.MaxBulk, int64(lim.MaxInline)) {
				t.Fatalf("argument of %d bytes over the limits", len(a))
			}
		}
	}
}

// checkRoundTrip encodes args, after a keepalive, and reads them back with
// limits that the command meets exactly.
func checkRoundTrip(t *testing.T, args []string) {
	lim := Limits{MaxArgs: len(args), MaxInline: 32}
	for _, a := range args {
		lim.MaxBulk = max(lim.MaxBulk, int64(len(a)))
	}
	in := []byte("\n")
	in = AppendCommand(in, args...)
	r := NewReader(bufio.NewReaderSize(bytes.NewReader(in), 16), lim)
	if got, err := r.ReadCommand(); err != nil || len(got) != 0 {
		t.Fatalf("keepalive read as %q, %v", got, err)
	}
	got, err := r.ReadCommand()
	if err != nil {
		t.Fatalf("reading back %d args: %v", len(args), err)
	}
	if len(got) != len(args) {
		t.Fatalf("read %d args, wrote %d", len(got), len(args))
	}
	for i := range args {
		if string(got[i]) != args[i] {
			t.Fatalf("arg %d: read %q, wrote %q", i, got[i], args[i])
		}
	}
	if _, err := r.ReadCommand(); err != io.EOF {
		t.Fatalf("after the command: %v, want EOF", err)
	}
}
