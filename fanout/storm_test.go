package fanout

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
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
// Every replica gets the stream where it should: after a full sync from
// the snapshot at S, from S+1; after a partial one, where it asked.
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
	s := newTestServer(Config{Store: store, Logger: zerolog.Nop(), ReplTimeout: time.Second, holdAhead: 200 * time.Millisecond,
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
	rec := &streamRecord{base: store.State().End}
	stormCtx, stopStorm := context.WithTimeout(ctx, 3*time.Second)
	defer stopStorm()
	var upstream sync.WaitGroup
	upstream.Add(2)
	go func() { // the link: appends, and now and then a new ID
		defer upstream.Done()
		for i := 0; stormCtx.Err() == nil; i++ {
			chunk := make([]byte, 4096)
			for j := range chunk {
				chunk[j] = byte(rand.IntN(256))
			}
			rec.add(chunk) // first: a replica may read it as soon as it is in
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
				if err := stormReplica(stormCtx, ln.Addr().String(), store, rec, 7000+rand.IntN(10000)); err != nil {
					t.Error(err)
					return
				}
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

// streamRecord is every byte appended, to check what replicas receive.
type streamRecord struct {
	mu    sync.Mutex
	base  int64
	bytes []byte
}

func (r *streamRecord) add(p []byte) {
	r.mu.Lock()
	r.bytes = append(r.bytes, p...)
	r.mu.Unlock()
}

// check compares bytes received from offset off with what was appended.
func (r *streamRecord) check(off int64, got []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	from := off - r.base
	if from < 0 || from+int64(len(got)) > int64(len(r.bytes)) {
		return fmt.Errorf("received %d bytes at offset %d, outside what was appended [%d, %d)", len(got), off, r.base, r.base+int64(len(r.bytes)))
	}
	if !bytes.Equal(got, r.bytes[from:from+int64(len(got))]) {
		return fmt.Errorf("the %d bytes received at offset %d differ from the stream there", len(got), off)
	}
	return nil
}

// stormReplica is one short replica session: a full or partial sync,
// some reading and ACKs, then it leaves. It checks that a full sync from
// the snapshot at S continues at S+1, and a partial one where it asked.
func stormReplica(ctx context.Context, addr string, store *backlog.Store, rec *streamRecord, port int) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil
	}
	defer conn.Close()
	st := store.State()
	id, off := "?", int64(-1)
	if rand.IntN(2) == 0 {
		id, off = st.ReplID, max(st.First, st.End-int64(rand.IntN(64<<10)))
	}
	var req []byte
	req = resp.AppendCommand(req, "REPLCONF", "listening-port", strconv.Itoa(port))
	req = resp.AppendCommand(req, "REPLCONF", "capa", "eof", "capa", "psync2")
	req = resp.AppendCommand(req, "PSYNC", id, strconv.FormatInt(off, 10))
	if _, err := conn.Write(req); err != nil {
		return nil
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
	br := bufio.NewReader(conn)
	start, err := stormPreamble(br, off)
	if err != nil || start < 0 {
		return err
	}
	got, _ := io.ReadAll(br)
	return rec.check(start, got)
}

// stormPreamble reads the replies up to the stream and returns the offset
// the stream starts at (-1: the session ended before it); a partial sync
// starts at the offset asked.
func stormPreamble(br *bufio.Reader, asked int64) (int64, error) {
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return -1, nil
		}
		line = strings.TrimRight(line, "\r\n")
		f := strings.Fields(line)
		switch {
		case line == "" || line == "+OK":
		case len(f) == 2 && f[0] == "+CONTINUE":
			return asked, nil
		case len(f) == 3 && f[0] == "+FULLRESYNC":
			snap, _ := strconv.ParseInt(f[2], 10, 64)
			return stormRDB(br, snap)
		default:
			return -1, fmt.Errorf("unexpected reply %q", line)
		}
	}
}

// stormRDB reads the RDB, which names the stream end it was taken at, and
// returns where the stream after it starts.
func stormRDB(br *bufio.Reader, snap int64) (int64, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return -1, nil
	}
	n, err := strconv.ParseInt(strings.TrimPrefix(strings.TrimRight(line, "\r\n"), "$"), 10, 64)
	if err != nil {
		return -1, fmt.Errorf("bad RDB preamble %q", line)
	}
	rdb := make([]byte, n)
	if _, err := io.ReadFull(br, rdb); err != nil {
		return -1, nil
	}
	if end := strings.TrimPrefix(string(rdb), "REDIS0010fake"); end != "" && end != strconv.FormatInt(snap+1, 10) {
		return -1, fmt.Errorf("+FULLRESYNC at offset %d sent the snapshot taken at %s", snap, end)
	}
	return snap + 1, nil
}
