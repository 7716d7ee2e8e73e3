package redisproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// LoadOptions shapes a Load. Zero values pick the defaults.
type LoadOptions struct {
	DBs      int   // databases 0..DBs-1 written by every worker; default 3
	Rate     int   // operations per second per worker; 0 = as fast as possible
	KeySpace int   // distinct keys per database, spread over all types; default 1000
	Seed     int64 // seeds each worker's operation sequence
	Workers  int   // goroutines, each with a client per database; default 2
}

func (o LoadOptions) withDefaults() LoadOptions {
	if o.DBs <= 0 {
		o.DBs = 3
	}
	if o.KeySpace <= 0 {
		o.KeySpace = 1000
	}
	if o.Workers <= 0 {
		o.Workers = 2
	}
	// Every kind needs at least one key of its own.
	o.KeySpace = max(o.KeySpace, len(keyKinds))
	return o
}

// Load is a running write load against a master; see StartLoad.
type Load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	ops     atomic.Int64
	dropped atomic.Int64

	mu       sync.Mutex
	firstErr error

	// groupReady[db] says the consumer group exists, so that workers
	// sharing a database create it once: a BUSYGROUP reply would count as
	// a failed call on the master and hide real failures in its stats.
	groupMu    sync.Mutex
	groupReady []bool

	stopOnce sync.Once
}

// StartLoad writes a realistic mix of commands to master until Stop or
// until ctx is cancelled: every data type, expiring keys, transactions and
// Lua scripts, across DBs 0..DBs-1. Each worker's sequence of operations
// is fixed by Seed; how the workers interleave is not.
func StartLoad(ctx context.Context, master *Server, opt LoadOptions) *Load {
	opt = opt.withDefaults()
	ctx, cancel := context.WithCancel(ctx)
	l := &Load{cancel: cancel, groupReady: make([]bool, opt.DBs)}
	var interval time.Duration
	if opt.Rate > 0 {
		interval = time.Second / time.Duration(opt.Rate)
	}
	for id := range opt.Workers {
		clients := make([]*redis.Client, opt.DBs)
		for db := range clients {
			clients[db] = newClient(master.Addr(), db, loadOptions, master.viaSocket)
		}
		w := newWorker(l, id, clients, opt)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			w.run(ctx, interval)
		}()
	}
	return l
}

// ensureGroup creates the consumer group of db unless a worker already
// did. It holds the lock across the round trip so only one worker tries.
func (l *Load) ensureGroup(ctx context.Context, c *redis.Client, db int) error {
	l.groupMu.Lock()
	defer l.groupMu.Unlock()
	if l.groupReady[db] {
		return nil
	}
	err := c.XGroupCreateMkStream(ctx, groupStream, groupName, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return err
	}
	l.groupReady[db] = true
	return nil
}

// forgetGroup is called when the group vanished with a restarted master.
func (l *Load) forgetGroup(db int) {
	l.groupMu.Lock()
	defer l.groupMu.Unlock()
	l.groupReady[db] = false
}

// loadOptions: no retries, so a write is never applied twice behind our
// back and a dead master shows up at once as a dropped operation; a short
// read timeout keeps Stop prompt while the master is paused.
func loadOptions(o *redis.Options) {
	o.MaxRetries = -1
	o.DialerRetries = 1
	o.DialTimeout = time.Second
	o.ReadTimeout = 2 * time.Second
	o.PoolSize = 2
}

// Stop ends the load and waits for its goroutines. It returns the number of
// operations that succeeded and the first unexpected error; failures caused
// by cancellation or by losing the master (see Dropped) are not errors.
// Calling Stop again returns the same result.
func (l *Load) Stop() (ops int64, err error) {
	l.stopOnce.Do(func() {
		l.cancel()
		l.wg.Wait()
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ops.Load(), l.firstErr
}

// Ops returns the number of operations that succeeded so far.
func (l *Load) Ops() int64 { return l.ops.Load() }

// Dropped returns the number of operations that failed because the load was
// stopping or the master was unreachable (killed, restarting, paused).
func (l *Load) Dropped() int64 { return l.dropped.Load() }

// record classifies the outcome of one operation and reports whether it
// was dropped, so the worker can back off instead of spinning.
func (l *Load) record(ctx context.Context, db int, op string, err error) (dropped bool) {
	switch {
	case err == nil || errors.Is(err, redis.Nil):
		l.ops.Add(1)
		return false
	case isDropped(ctx, err):
		l.dropped.Add(1)
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.firstErr == nil {
		l.firstErr = fmt.Errorf("load db %d: %s: %w", db, op, err)
	}
	return false
}

// isDropped tells failures the load expects while tests stop, kill,
// restart or pause the master apart from real errors.
func isDropped(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return true
	}
	for _, target := range []error{
		context.Canceled, context.DeadlineExceeded,
		redis.ErrClosed, redis.ErrPoolTimeout,
		io.EOF, io.ErrUnexpectedEOF, net.ErrClosed,
		syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EPIPE,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	// A master restarted from its RDB refuses commands until it is loaded.
	return strings.HasPrefix(err.Error(), "LOADING")
}
