package resp

import (
	"bufio"
	"bytes"
	"io"
	"math"
	"strings"
	"testing"
)

func TestAppend(t *testing.T) {
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"simple", AppendSimple(nil, "OK"), "+OK\r\n"},
		{"simple empty", AppendSimple(nil, ""), "+\r\n"},
		{"simple newlines", AppendSimple(nil, "a\r\nb\nc"), "+a  b c\r\n"},
		{"error", AppendError(nil, "ERR unknown command"), "-ERR unknown command\r\n"},
		{"error newlines", AppendError(nil, "ERR Protocol error: got '\r\n'"), "-ERR Protocol error: got '  '\r\n"},
		{"int", AppendInt(nil, 42), ":42\r\n"},
		{"int zero", AppendInt(nil, 0), ":0\r\n"},
		{"int negative", AppendInt(nil, -1), ":-1\r\n"},
		{"int min", AppendInt(nil, math.MinInt64), ":-9223372036854775808\r\n"},
		{"bulk", AppendBulk(nil, []byte("hello")), "$5\r\nhello\r\n"},
		{"bulk binary", AppendBulk(nil, []byte("a\r\n\x00")), "$4\r\na\r\n\x00\r\n"},
		{"bulk empty", AppendBulk(nil, []byte{}), "$0\r\n\r\n"},
		{"bulk nil", AppendBulk(nil, nil), "$0\r\n\r\n"},
		{"bulk string", AppendBulkString(nil, "hello"), "$5\r\nhello\r\n"},
		{"bulk string empty", AppendBulkString(nil, ""), "$0\r\n\r\n"},
		{"null bulk", AppendNullBulk(nil), "$-1\r\n"},
		{"array header", AppendArrayHeader(nil, 3), "*3\r\n"},
		{"array header empty", AppendArrayHeader(nil, 0), "*0\r\n"},
		{"array header null", AppendArrayHeader(nil, -1), "*-1\r\n"},
		{"command", AppendCommand(nil, "REPLCONF", "ACK", "100"), "*3\r\n$8\r\nREPLCONF\r\n$3\r\nACK\r\n$3\r\n100\r\n"},
		{"command no args", AppendCommand(nil), "*0\r\n"},
		{"appends", AppendInt(AppendSimple([]byte("x"), "OK"), 1), "x+OK\r\n:1\r\n"},
	}
	for _, tt := range tests {
		if string(tt.got) != tt.want {
			t.Errorf("%s: got %q, want %q", tt.name, tt.got, tt.want)
		}
	}
}

func TestAppendDoesNotAllocateWithRoom(t *testing.T) {
	buf := make([]byte, 0, 1024)
	payload := []byte("value")
	allocs := testing.AllocsPerRun(100, func() {
		b := AppendSimple(buf[:0], "OK")
		b = AppendError(b, "ERR no")
		b = AppendInt(b, 12345)
		b = AppendBulk(b, payload)
		b = AppendBulkString(b, "s")
		b = AppendNullBulk(b)
		b = AppendArrayHeader(b, 2)
		_ = AppendCommand(b, "PING", "x")
	})
	if allocs != 0 {
		t.Errorf("%v allocations per run, want 0", allocs)
	}
}

// What the Append functions write, a Reader reads back.
func TestAppendCommandRoundTrip(t *testing.T) {
	cmds := [][]string{
		{"PING"},
		{"SET", "k", "a\r\nb"},
		{"", "", ""},
		{"REPLCONF", "GETACK", "*"},
		{strings.Repeat("x", 100000)},
	}
	var stream []byte
	for _, c := range cmds {
		stream = AppendCommand(stream, c...)
	}
	r := NewReader(bufio.NewReaderSize(bytes.NewReader(stream), 16), DefaultLimits())
	got, err := readAll(r)
	checkErr(t, err, io.EOF, "")
	if len(got) != len(cmds) {
		t.Fatalf("read %d commands, want %d", len(got), len(cmds))
	}
	for i := range cmds {
		if strings.Join(got[i], "\x00") != strings.Join(cmds[i], "\x00") {
			t.Errorf("command %d differs", i)
		}
	}
}
