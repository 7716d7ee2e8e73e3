package fanout

import (
	"io"
	"net"
	"testing"

	"github.com/replproxy/replproxy/internal/rawsock"
)

// memoryWriter takes what a full socket takes now, short and with no
// error, as Cursor.SendRecent expects: it is no io.Writer, whose short
// writes must come with an error, and it marks the socket full.
func TestMemoryWriterTakesWhatTheSocketTakes(t *testing.T) {
	if _, ok := any(&memoryWriter{}).(io.Writer); ok {
		t.Fatal("memoryWriter is an io.Writer, whose short writes must come with an error")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer, err := ln.Accept() // never reads
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	full := false
	w := &memoryWriter{raw: rawsock.Of(c), full: &full}
	p := make([]byte, 1<<20)
	for i := 0; i < 256 && !full; i++ {
		n, err := w.send(p)
		if err != nil || n > len(p) || (n < len(p)) != full {
			t.Fatalf("send %d: %d bytes, error %v, full %v", i, n, err, full)
		}
	}
	if !full {
		t.Fatal("256 MiB sent to a socket nobody reads and never a short write")
	}
}
