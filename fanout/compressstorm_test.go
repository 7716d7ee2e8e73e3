package fanout

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/resp"
)

// lockedBuffer is a log sink several goroutines write to.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Compressed replicas (zstd and s2, plain TCP and TLS) that continue, read
// a while with honest ACKs, and leave, in a storm, while the link appends,
// a failed fsync cuts the log back and the master sends the cut bytes
// again, the refresher adopts snapshots, and a new upstream ID drops every
// replica. Each replica decodes exactly the stream from where it asked, no
// honest ACK is ever called a lie (maxAck below what reached the replica),
// and no goroutine is left once the server stops.
func TestCompressedStormAcrossCutsAndDrops(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := "tcp"
		if useTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) { compressedStorm(t, useTLS) })
	}
}

func compressedStorm(t *testing.T, useTLS bool) {
	before := runtime.NumGoroutine()
	var fail atomic.Bool
	store, err := backlog.Open(t.TempDir(), backlog.Options{
		Log: backlog.LogOptions{SegmentBytes: 256 << 10, MaxBytes: 8 << 20, Fsync: backlog.FsyncEverySec,
			Sync: func(f *os.File) error {
				if fail.Load() {
					return fmt.Errorf("fsync %s: injected EIO", f.Name())
				}
				return f.Sync()
			}},
		Logger: zerolog.Nop(), SnapshotKeep: 2,
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
	var logged lockedBuffer
	s := newTestServer(Config{Store: store, Logger: zerolog.New(&logged), ReplTimeout: 5 * time.Second,
		MaxConcurrentFullSyncs: 4, NeedSnapshot: func(int64) {}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var dial func() (net.Conn, error)
	if useTLS {
		ln = tls.NewListener(ln, selfSignedTLS(t))
		dial = func() (net.Conn, error) {
			return tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		}
	} else {
		dial = func() (net.Conn, error) { return net.Dial("tcp", ln.Addr().String()) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.Serve(ctx, ln)
	}()
	rec := &streamRecord{base: store.State().End}
	// The storm lasts as many appends as it takes to see several cuts
	// and ID shifts, however slow the machine.
	stormCtx, stopStorm := context.WithTimeout(ctx, time.Minute)
	defer stopStorm()
	var cuts, shifts, appends atomic.Int64
	var upstream sync.WaitGroup
	upstream.Add(2)
	pool := mixedBytes(1 << 20)
	go func() { // the link
		defer upstream.Done()
		defer stopStorm()
		for i := 0; i < 420 && stormCtx.Err() == nil; i++ {
			from := rand.IntN(len(pool) - 16<<10)
			chunk := pool[from : from+1+rand.IntN(16<<10)]
			rec.add(chunk)
			appends.Add(1)
			err := store.Append(chunk)
			if i%60 == 59 || errors.Is(err, backlog.ErrRewound) {
				if err := stormCut(store, rec, &fail); err != nil {
					t.Error(err)
					return
				}
				cuts.Add(1)
			} else if err != nil {
				t.Error(err)
				return
			}
			if i%150 == 149 {
				if err := store.ShiftID(backlog.RandomReplID()); err != nil {
					t.Error(err)
					return
				}
				s.DropAll("upstream replication ID changed")
				shifts.Add(1)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	go func() { // the refresher
		defer upstream.Done()
		for stormCtx.Err() == nil {
			st := store.State()
			w, err := store.NewSnapshot()
			if err != nil {
				t.Error(err)
				return
			}
			w.Write([]byte("REDIS0010fake"))
			store.AdoptSnapshot(st.ReplID, st.End-1, w) // refused when the ID or the end moved back
			time.Sleep(40 * time.Millisecond)
		}
	}()
	var clients sync.WaitGroup
	var streamed atomic.Int64
	for i := 0; i < 6; i++ {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for stormCtx.Err() == nil {
				n, err := compressedStormReplica(stormCtx, dial, store, rec)
				if err != nil {
					t.Error(err)
					return
				}
				streamed.Add(n)
			}
		}()
	}
	clients.Wait()
	upstream.Wait()
	t.Logf("appends %d, cuts %d, id shifts %d, partial syncs %d, bytes decoded and checked %d, sent from memory %d, from disk %d",
		appends.Load(), cuts.Load(), shifts.Load(), s.stats.SyncPartialOK.Load(), streamed.Load(),
		s.stats.SentFromMemory.Load(), s.stats.SentFromDisk.Load())
	if streamed.Load() == 0 {
		t.Fatal("no replica decoded any stream")
	}
	for _, line := range strings.Split(logged.String(), "\n") {
		if strings.Contains(line, "never sent") {
			t.Fatalf("an honest ACK was taken for a lie: %s", line)
		}
	}
	cancel()
	wg.Wait()
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after shutdown, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

// stormCut fails an fsync, so the log is cut back to its durable end, and
// then appends again, as the master would after the PSYNC, every byte
// the record holds past that end: the same bytes at the same offsets.
func stormCut(store *backlog.Store, rec *streamRecord, fail *atomic.Bool) error {
	fail.Store(true)
	store.SyncNow()
	fail.Store(false)
	for {
		// The background fsync may have failed too, and cut again.
		store.Resume()
		end := store.State().End
		rec.mu.Lock()
		again := append([]byte(nil), rec.bytes[end-rec.base:]...)
		rec.mu.Unlock()
		var err error
		for len(again) > 0 && err == nil {
			n := min(len(again), 1+rand.IntN(32<<10))
			err = store.Append(again[:n])
			again = again[n:]
		}
		if err == nil || !errors.Is(err, backlog.ErrRewound) {
			if err != nil {
				return fmt.Errorf("append after the cut: %w", err)
			}
			return nil
		}
	}
}

// compressedStormReplica continues from near the end with a codec, decodes
// for a while, sending ACKs of what it decoded, and checks every byte
// against the record. It returns how many bytes it checked.
func compressedStormReplica(ctx context.Context, dial func() (net.Conn, error), store *backlog.Store, rec *streamRecord) (int64, error) {
	conn, err := dial()
	if err != nil {
		return 0, nil
	}
	defer conn.Close()
	st := store.State()
	off := max(st.First, st.End-int64(rand.IntN(256<<10)))
	codec := AllCodecs()[rand.IntN(len(AllCodecs()))]
	var req []byte
	req = resp.AppendCommand(req, "REPLCONF", "listening-port", strconv.Itoa(7000+rand.IntN(10000)))
	req = resp.AppendCommand(req, "REPLCONF", "capa", "eof", "capa", "psync2", "capa", Capa(codec))
	req = resp.AppendCommand(req, "PSYNC", st.ReplID, strconv.FormatInt(off, 10))
	if _, err := conn.Write(req); err != nil {
		return 0, nil
	}
	conn.SetReadDeadline(time.Now().Add(time.Duration(50+rand.IntN(400)) * time.Millisecond))
	br := bufio.NewReader(conn)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return 0, nil
		}
		f := strings.Fields(strings.TrimRight(line, "\r\n"))
		if len(f) == 0 || f[0] == "+OK" {
			continue
		}
		if f[0] != "+CONTINUE" {
			return 0, nil // a full sync (the ID moved or the offset left the log): not this test's path
		}
		if len(f) != 3 || f[2] != codec {
			return 0, fmt.Errorf("asked for %s, got %q", codec, line)
		}
		break
	}
	dec, err := NewStreamDecoder(codec, br)
	if err != nil {
		return 0, err
	}
	var decoded atomic.Int64
	ackDone := make(chan struct{})
	go func() { // honest ACKs, ended by the connection's close
		defer close(ackDone)
		for ctx.Err() == nil {
			ack := resp.AppendCommand(nil, "REPLCONF", "ACK", strconv.FormatInt(off+decoded.Load()-1, 10))
			if _, err := conn.Write(ack); err != nil {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	var got []byte
	buf := make([]byte, 32<<10)
	for {
		n, err := dec.Read(buf)
		got = append(got, buf[:n]...)
		decoded.Add(int64(n))
		if err != nil {
			break
		}
	}
	conn.Close()
	<-ackDone
	if err := rec.check(off, got); err != nil {
		return 0, fmt.Errorf("%s replica from %d: %w", codec, off, err)
	}
	return int64(len(got)), nil
}
