package fanout

import (
	"bufio"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/resp"
)

// Replicas that connect, sync and leave in a storm, while the upstream
// side appends past retention, adopts snapshots (history kept, retention
// holding the snapshot's stream), shifts IDs and drops every replica, and
// then the server shuts down: no race, no deadlock, and no goroutine left.
func TestStormLeavesNoGoroutine(t *testing.T) {
	before := runtime.NumGoroutine()
	store, err := backlog.Open(t.TempDir(), backlog.Options{
		Log: backlog.LogOptions{SegmentBytes: 64 << 10, MaxBytes: 256 << 10, HoldMaxBytes: 128 << 10,
			Fsync: backlog.FsyncNo},
		Logger: zerolog.Nop(), SnapshotKeep: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	w, err := store.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("REDIS0010fake"))
	if err := store.Reset(backlog.RandomReplID(), 0, w); err != nil {
		t.Fatal(err)
	}
	s := New(Config{Store: store, Logger: zerolog.Nop(), ReplTimeout: time.Second, HoldAhead: 200 * time.Millisecond,
		MaxConcurrentFullSyncs: 4, NeedSnapshot: func(int64) {}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.Serve(ctx, ln)
	}()
	stormCtx, stopStorm := context.WithTimeout(ctx, 3*time.Second)
	defer stopStorm()
	var upstream sync.WaitGroup
	upstream.Add(2)
	go func() { // the link: appends, and now and then a new ID
		defer upstream.Done()
		chunk := []byte(strings.Repeat("*1\r\n$4\r\nPING\r\n", 300))
		for i := 0; stormCtx.Err() == nil; i++ {
			if err := store.Append(chunk); err != nil {
				t.Error(err)
				return
			}
			if i%200 == 199 {
				if err := store.ShiftID(backlog.RandomReplID()); err != nil {
					t.Error(err)
					return
				}
				s.DropAll("upstream replication ID changed")
			}
			time.Sleep(time.Millisecond)
		}
	}()
	go func() { // the refresher: adopts a snapshot at the end, often
		defer upstream.Done()
		for stormCtx.Err() == nil {
			st := store.State()
			w, err := store.NewSnapshot()
			if err != nil {
				t.Error(err)
				return
			}
			w.Write([]byte("REDIS0010fake" + strconv.FormatInt(st.End, 10)))
			store.AdoptSnapshot(st.ReplID, st.End-1, w) // refused when the ID moved meanwhile
			time.Sleep(50 * time.Millisecond)
		}
	}()
	var clients sync.WaitGroup
	for i := 0; i < 30; i++ {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for stormCtx.Err() == nil {
				stormReplica(stormCtx, ln.Addr().String(), store, 7000+rand.IntN(10000))
			}
		}()
	}
	clients.Wait()
	upstream.Wait()
	t.Logf("full syncs %d, partial %d", s.stats.SyncFull.Load(), s.stats.SyncPartialOK.Load())
	cancel()
	wg.Wait()
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after shutdown, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// stormReplica is one short replica session: a full or partial sync,
// some reading and ACKs, then it leaves.
func stormReplica(ctx context.Context, addr string, store *backlog.Store, port int) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer conn.Close()
	st := store.State()
	id, off := "?", "-1"
	if rand.IntN(2) == 0 {
		id, off = st.ReplID, strconv.FormatInt(max(st.First, st.End-int64(rand.IntN(64<<10))), 10)
	}
	var req []byte
	req = resp.AppendCommand(req, "REPLCONF", "listening-port", strconv.Itoa(port))
	req = resp.AppendCommand(req, "REPLCONF", "capa", "eof", "capa", "psync2")
	req = resp.AppendCommand(req, "PSYNC", id, off)
	if _, err := conn.Write(req); err != nil {
		return
	}
	life := time.Duration(rand.IntN(300)) * time.Millisecond
	conn.SetReadDeadline(time.Now().Add(life))
	go func() { // ACKs, ended by the connection's close
		ack := resp.AppendCommand(nil, "REPLCONF", "ACK", "1")
		for ctx.Err() == nil {
			if _, err := conn.Write(ack); err != nil {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	io.Copy(io.Discard, bufio.NewReader(conn))
}
