package fanout

import (
	"strings"
	"testing"

	"github.com/replproxy/replproxy/resp"
)

// The scanner finds the same boundary and database however the stream is
// cut into writes: the log hands it records of any size.
func TestCommandScannerAnySplit(t *testing.T) {
	var stream []byte
	stream = resp.AppendCommand(stream, "SELECT", "12")
	stream = resp.AppendCommand(stream, "SET", "k", strings.Repeat("v", 100))
	stream = resp.AppendCommand(stream, "MULTI")
	stream = resp.AppendCommand(stream, "SELECT", "4")
	stream = resp.AppendCommand(stream, "INCR", "n")
	stream = resp.AppendCommand(stream, "EXEC")
	wantEnd := int64(len(stream)) + 10
	stream = resp.AppendCommand(stream, "ping")
	stream = resp.AppendCommand(stream, "MULTI")
	stream = resp.AppendCommand(stream, "DEL", "k")
	for size := 1; size <= len(stream); size++ {
		sc := newCommandScanner(10, 0)
		for i := 0; i < len(stream); i += size {
			if _, err := sc.Write(stream[i:min(i+size, len(stream))]); err != nil {
				t.Fatalf("writes of %d: %v", size, err)
			}
		}
		if want := wantEnd + int64(len("*1\r\n$4\r\nping\r\n")); sc.boundary != want || sc.db != 4 {
			t.Fatalf("writes of %d: boundary %d db %d, want %d and 4", size, sc.boundary, sc.db, want)
		}
	}
	if _, err := newCommandScanner(0, 0).Write([]byte("xxxx\r\n")); err == nil {
		t.Fatal("a stream that is no RESP array was taken")
	}
}
