package backlog

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// FsyncPolicy says when appended bytes are forced to disk, like Redis'
// appendfsync. The proxy acknowledges upstream only what is durable under it.
type FsyncPolicy string

const (
	FsyncAlways   FsyncPolicy = "always"   // group commit: one fsync covers every append made while the previous one ran
	FsyncEverySec FsyncPolicy = "everysec" // at most one second of stream is lost on a power failure
	FsyncNo       FsyncPolicy = "no"       // the kernel decides; a process crash loses nothing, a power failure may
)

// ParseFsyncPolicy validates a config value; the default, everysec, is
// the proxy's configuration's to fill in, so "" is refused like any typo.
func ParseFsyncPolicy(s string) (FsyncPolicy, error) {
	switch p := FsyncPolicy(s); p {
	case FsyncAlways, FsyncEverySec, FsyncNo:
		return p, nil
	}
	return "", fmt.Errorf("fsync policy %q: want always, everysec or no", s)
}

// SyncFunc forces a file's data to disk. Every fsync of the store goes
// through one, so a test can make the disk fail.
type SyncFunc func(*os.File) error

func fileSync(f *os.File) error { return f.Sync() }

// SyncStats reports fsync latency for INFO and metrics.
type SyncStats struct {
	Count   int64
	Last    time.Duration
	Max     time.Duration
	Total   time.Duration
	LastErr error
	Slow    int64 // fsyncs slower than SlowSync
	Failed  int64 // failed fsyncs, each followed by a cut back to the durable offset
}

// SlowSync is the fsync duration above which a warning is logged. An
// everysec fsync of a busy second's writes takes about a second on a disk
// that keeps up; Redis warns about AOF fsync past two seconds, and so do we.
const SlowSync = 2 * time.Second

// syncer owns fsync for one log, and with it the durability rule: durable
// moves only to a target all of whose bytes were fsynced without error, by
// this process or (see OpenLog) right after recovery. A failed fsync freezes
// durable and cuts the log back to it, since on Linux a later fsync may
// succeed after the kernel dropped the pages the failed one could not write.
type syncer struct {
	log    *Log
	policy FsyncPolicy
	sync   SyncFunc
	wake   chan struct{}
	done   chan struct{}

	syncMu   sync.Mutex // one sync at a time: durable may only cover what was synced
	mu       sync.Mutex
	retired  []*activeSegment // rolled segments still to be synced, sealed and closed
	target   int64            // end offset written so far
	failed   bool             // an fsync failed and the cut back to durable is not done yet
	stats    SyncStats
	lastWarn time.Time
	stopped  bool
}

func startSyncer(l *Log, policy FsyncPolicy, sync SyncFunc, target int64) *syncer {
	s := &syncer{log: l, policy: policy, sync: sync, target: target, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if policy == FsyncNo {
		close(s.done)
		return s
	}
	go s.run()
	return s
}

func (s *syncer) dirty(end int64) {
	s.mu.Lock()
	s.target = end
	s.mu.Unlock()
	if s.policy == FsyncNo {
		storeMax(&s.log.durable, end)
		return
	}
	if s.policy == FsyncAlways {
		s.poke()
	}
}

func (s *syncer) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// retire hands a rolled segment over, to be fsynced now rather than at the
// next tick; the caller holds the log's lock.
func (s *syncer) retire(a *activeSegment) {
	if s.policy == FsyncNo {
		a.close()
		return
	}
	s.mu.Lock()
	s.retired = append(s.retired, a)
	s.mu.Unlock()
	s.poke()
}

func (s *syncer) run() {
	defer close(s.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-s.wake:
		case <-tick.C:
		}
		s.mu.Lock()
		stopped := s.stopped
		s.mu.Unlock()
		if stopped {
			return
		}
		s.syncOnce()
	}
}

// syncOnce makes everything appended before it started durable, or, if an
// fsync fails, cuts the log back to what is.
func (s *syncer) syncOnce() {
	s.syncMu.Lock()
	// Take target, retired files and the active file in one view, under the
	// log's lock, so that the bytes counted in target are all in those files.
	s.log.mu.RLock()
	s.mu.Lock()
	target, retired, active, failed := s.target, s.retired, s.log.active, s.failed
	if !failed {
		// While a cut is pending, rolled segments stay queued: the cut
		// closes the ones it removes and keeps the others for the next sync.
		s.retired = nil
	}
	s.mu.Unlock()
	s.log.mu.RUnlock()
	if failed || (target <= s.log.durable.Load() && len(retired) == 0) {
		s.syncMu.Unlock()
		return
	}
	start := time.Now()
	err := s.syncFiles(retired, active)
	d := time.Since(start)
	s.record(d, err)
	if s.log.opt.OnFsync != nil {
		s.log.opt.OnFsync(d)
	}
	if err == nil {
		storeMax(&s.log.durable, target)
		s.syncMu.Unlock()
		return
	}
	s.mu.Lock()
	s.failed = true
	s.mu.Unlock()
	s.syncMu.Unlock()
	s.log.afterSyncFailure(err)
}

func (s *syncer) syncFiles(retired []*activeSegment, active *activeSegment) error {
	var firstErr error
	for _, a := range retired {
		err := a.sync(s.sync)
		if err == nil {
			err = a.seal(s.sync)
		}
		if err != nil && firstErr == nil {
			firstErr = err
		}
		a.close()
	}
	if firstErr != nil || active == nil {
		return firstErr
	}
	return active.sync(s.sync)
}

func (a *activeSegment) sync(sync SyncFunc) error {
	// Data first: an index record must never be durable before its bytes.
	if err := sync(a.data); err != nil {
		return fmt.Errorf("fsync %s: %w", a.data.Name(), err)
	}
	if err := sync(a.idx); err != nil {
		return fmt.Errorf("fsync %s: %w", a.idx.Name(), err)
	}
	return nil
}

// seal records, after a successful fsync, that the segment is on disk whole.
func (a *activeSegment) seal(sync SyncFunc) error {
	if _, err := a.idx.WriteAt(appendRecord(nil, sealLength, sealCRC), a.idxSize); err != nil {
		return fmt.Errorf("seal %s: %w", a.idx.Name(), err)
	}
	if err := sync(a.idx); err != nil {
		return fmt.Errorf("fsync %s: %w", a.idx.Name(), err)
	}
	a.seg.synced.Store(true)
	return nil
}

func (a *activeSegment) close() error {
	err := a.data.Close()
	if ierr := a.idx.Close(); err == nil {
		err = ierr
	}
	return err
}

func (s *syncer) record(d time.Duration, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Count++
	s.stats.Last = d
	s.stats.Total += d
	if d > s.stats.Max {
		s.stats.Max = d
	}
	if d > SlowSync {
		s.stats.Slow++
		if time.Since(s.lastWarn) > 10*time.Second { // one line per episode, not per fsync
			s.lastWarn = time.Now()
			s.log.log.Warn().Dur("fsync_ms", d).Str("policy", string(s.policy)).Int64("slow_fsyncs", s.stats.Slow).
				Msg("slow fsync: the disk is not keeping up; acknowledgements upstream are delayed")
		}
	}
	if err != nil {
		s.stats.Failed++
	}
	s.stats.LastErr = err
}

// cleared ends a failure episode once the log was cut back to durable.
func (s *syncer) cleared(end int64) {
	s.mu.Lock()
	s.failed = false
	s.target = end
	s.mu.Unlock()
}

func (s *syncer) snapshot() SyncStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// storeMax raises v to x; syncs may finish out of order (SyncNow runs
// beside the syncer), and durable must never go back.
func storeMax(v *atomic.Int64, x int64) {
	for {
		cur := v.Load()
		if x <= cur || v.CompareAndSwap(cur, x) {
			return
		}
	}
}

// stop syncs what remains and closes the active segment.
func (s *syncer) stop(active *activeSegment) error {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	s.poke()
	<-s.done
	var err error
	if s.policy != FsyncNo {
		s.syncOnce()
		err = s.snapshot().LastErr
	}
	s.mu.Lock()
	retired := s.retired
	s.retired = nil
	s.mu.Unlock()
	for _, a := range retired {
		a.close()
	}
	if active != nil {
		if cerr := active.close(); cerr != nil && err == nil {
			err = fmt.Errorf("close segment %d: %w", active.seg.first, cerr)
		}
	}
	return err
}
