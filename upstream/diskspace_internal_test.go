package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/backlog"
)

// Issue 21, point 3: a session that ended on a disk error is no healthy
// session, whatever it stored: the backoff keeps growing, to
// diskBackoffMax, and a full disk waits at least one space check. A
// healthy session still resets it, as before.
func TestNextBackoffAfterDiskErrors(t *testing.T) {
	l := &Link{cfg: Config{BackoffMin: 200 * time.Millisecond, BackoffMax: 5 * time.Second}}
	full := &storeFailure{fmt.Errorf("store stream: append: %w", syscall.ENOSPC)}
	backoff := l.cfg.BackoffMin
	var waits []time.Duration
	for i := 0; i < 6; i++ {
		wait, next := l.nextBackoff(backoff, full, true)
		waits = append(waits, wait)
		backoff = next
	}
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second, 10 * time.Second}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits after sessions that stored bytes and then hit ENOSPC: %v, want %v", waits, want)
		}
	}
	rewound := &storeFailure{fmt.Errorf("store stream: %w", backlog.ErrRewound)}
	if wait, next := l.nextBackoff(time.Second, rewound, true); wait != time.Second || next != 2*time.Second {
		t.Fatalf("after a cut of the log: wait %s then %s, want 1s then 2s", wait, next)
	}
	if wait, next := l.nextBackoff(4*time.Second, errors.New("master closed the connection"), true); wait != l.cfg.BackoffMin || next != 2*l.cfg.BackoffMin {
		t.Fatalf("after a healthy session: wait %s then %s, want the minimum", wait, next)
	}
	if wait, next := l.nextBackoff(4*time.Second, errors.New("connect: refused"), false); wait != 4*time.Second || next != l.cfg.BackoffMax {
		t.Fatalf("after a failed connect: wait %s then %s", wait, next)
	}
}

// Issue 21, point 3: no PSYNC, which a master may answer with a full sync,
// while the data dir cannot hold an RDB of the last one's size: the link
// does not even dial, says why, and dials soon after space returns. Needs
// root for the small tmpfs.
func TestNoSyncWithoutRoomForTheRDB(t *testing.T) {
	mnt := filepath.Join(t.TempDir(), "i21b-rdb-disk")
	os.MkdirAll(mnt, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("this test mounts a small tmpfs, which needs root: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	dataDir := filepath.Join(mnt, "data")
	store, err := backlog.Open(dataDir, backlog.Options{
		Log:    backlog.LogOptions{SegmentBytes: 1 << 20, MaxBytes: 1 << 30, Fsync: backlog.FsyncNo},
		Logger: zerolog.Nop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	w, err := store.NewSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	w.Write(append([]byte("REDIS0010"), make([]byte, 7<<20)...))
	if err := store.Reset(backlog.RandomReplID(), 0, w); err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var dials atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dials.Add(1)
			c.Close()
		}
	}()
	l := NewLink(Config{Addr: ln.Addr().String(), ReplTimeout: time.Minute, ConnectTimeout: time.Second,
		BackoffMin: 200 * time.Millisecond, BackoffMax: time.Second,
		DataDir: dataDir, SegmentBytes: 1 << 20, spaceEvery: 50 * time.Millisecond}, store, nil, zerolog.Nop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	time.Sleep(time.Second)
	why, _ := l.DiskWait()
	if n := dials.Load(); n != 0 || !strings.Contains(why, "full sync") {
		t.Fatalf("with room for less than the last RDB: %d connections to the master, wait reason %q", n, why)
	}
	if out, err := exec.Command("mount", "-o", "remount,size=64m", mnt).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v %s", err, out)
	}
	deadline := time.Now().Add(30 * time.Second)
	for dials.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the link did not dial the master once the data dir had room")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if why, _ := l.DiskWait(); why != "" {
		t.Fatalf("the link dialed but still says it waits: %q", why)
	}
}

// Issue 21, point 3: after a full sync's RDB did not fit, the link waits
// for room for that RDB, not for the smaller stored snapshot: else each
// attempt would fork the master for an RDB with nowhere to go.
func TestRDBThatDidNotFitSetsTheNeed(t *testing.T) {
	l := NewLink(Config{Addr: "127.0.0.1:1", SegmentBytes: 1 << 20}, newHistoryStore(t), nil, zerolog.Nop())
	enospc := fmt.Errorf("receive RDB: write: %w", syscall.ENOSPC)
	l.Sync.begin()
	l.Sync.Total.Store(5 << 20)
	l.noteRDBTooLarge(errors.New("master closed the connection"))
	if need, _ := l.spaceNeed(); need != 1<<20+spaceMargin {
		t.Fatalf("a transfer cut by the master set the need to %d", need)
	}
	l.noteRDBTooLarge(enospc)
	if need, why := l.spaceNeed(); need != 5<<20+spaceMargin || !strings.Contains(why, "did not fit") {
		t.Fatalf("after a 5 MiB RDB did not fit: need %d (%s)", need, why)
	}
	l.Sync.begin() // a diskless transfer: size unknown
	l.Sync.Done.Store(4 << 20)
	l.noteRDBTooLarge(enospc)
	if need, _ := l.spaceNeed(); need != 8<<20+spaceMargin {
		t.Fatalf("after a diskless RDB filled the disk at 4 MiB: need %d, want 8 MiB and the margin", need)
	}
}
