package upstream

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/internal/rawsock"
)

// A stop (SIGTERM, or a repoint ending the session) ends the upstream read
// at once, also while the proxy is behind and every socket read comes back
// full. The stream is read inside one RawRead callback, and closing the
// socket does not end that callback (only its next wait fails), so the
// proxy went on storing the old session's bytes until it had read all the
// master had queued. Here the socket holds megabytes when the read starts
// under an ended context: not one byte may be stored.
func TestStopWhileBehindEndsTheRead(t *testing.T) {
	store := newHistoryStore(t)
	l := NewLink(Config{Addr: "127.0.0.1:1", ReplTimeout: time.Minute}, store, nil, zerolog.Nop())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	queued := make(chan struct{})
	go func() { // the master, with a backlog of stream for this replica
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		chunk := make([]byte, 1<<20)
		for i := 0; ; i++ {
			if _, err := c.Write(chunk); err != nil {
				return
			}
			if i == 0 {
				close(queued)
			}
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn := &watchedConn{Conn: raw, timeout: time.Minute, lastIO: &l.lastIO}
	<-queued
	ctx, stop := context.WithCancel(context.Background())
	stop() // the session ended as the read begins
	context.AfterFunc(ctx, func() { conn.Close() })
	start := store.State().End
	in := &ingest{l: l, getack: make(chan struct{}, 1)}
	if err := in.fromSocket(ctx, conn, rawsock.Of(conn.Conn)); err == nil {
		t.Fatal("the read of an ended session returned no error")
	}
	if n := store.State().End - start; n != 0 {
		t.Fatalf("%d bytes stored after the session ended", n)
	}
}
