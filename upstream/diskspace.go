package upstream

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/replproxy/replproxy/backlog"
	"github.com/replproxy/replproxy/fanout"
)

// A full data dir must not turn into a loop of PSYNCs: each one makes the
// master resend the gap, and once its backlog no longer covers it, fork
// for a full sync whose RDB has nowhere to go. So the link reconnects only
// when the data dir has room for what the master may send.
const (
	// spaceCheckEvery is how often a link waiting for space looks again.
	spaceCheckEvery = 2 * time.Second
	// diskBackoffMax bounds the backoff after sessions that ended on a
	// disk error (space said to be there, yet the disk failed).
	diskBackoffMax = 10 * time.Second
	// spaceMargin is room beyond the RDB or the segment: index records,
	// meta and the time index.
	spaceMargin = 1 << 20
)

// storeFailure is a session's end caused by the data dir, not the master.
type storeFailure struct{ err error }

func (e *storeFailure) Error() string { return e.err.Error() }
func (e *storeFailure) Unwrap() error { return e.err }

// isDiskFull says whether err comes from a data dir out of space or quota.
func isDiskFull(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// isDiskError says whether a session ended because of the data dir: such
// an end is no sign of a healthy link, whatever it stored before.
func isDiskError(err error) bool {
	var sf *storeFailure
	return isDiskFull(err) || errors.As(err, &sf) || errors.Is(err, backlog.ErrRewound)
}

// FreeBytes is the data dir's free space as df shows it, and as the
// metric replproxy_data_dir_free_bytes reports it: blocks reserved for
// root are not counted, even for a proxy running as root, so the link
// never counts on space an operator sees as gone.
func FreeBytes(dir string) (int64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(dir, &fs); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(fs.Bavail) * int64(fs.Bsize), nil
}

// spaceNeed is the free space the next session may use, and why. Any
// PSYNC may be answered with a full sync, whose RDB is written beside the
// current snapshot and log: about the last RDB's size. A partial resync
// needs room for the next segment.
func (l *Link) spaceNeed() (int64, string) {
	st := l.store.State()
	rdb, what := int64(0), "the last one's size"
	if st.Snapshot != nil {
		rdb = st.Snapshot.Size
	}
	if n := l.rdbNeed.Load(); n > rdb {
		rdb, what = n, "the size of the one that did not fit"
	}
	if rdb >= l.cfg.SegmentBytes {
		return rdb + spaceMargin, fmt.Sprintf("a full sync from the master would bring an RDB of about %d bytes (%s), which the data dir cannot hold", rdb, what)
	}
	return l.cfg.SegmentBytes + spaceMargin, fmt.Sprintf("the next backlog segment (%d bytes) does not fit", l.cfg.SegmentBytes)
}

// diskWait is the link's wait for space, for readiness, INFO and metrics.
type diskWait struct {
	reason string
	since  time.Time
}

// DiskWait says why the link waits for space in the data dir, and since
// when; "" when it does not wait.
func (l *Link) DiskWait() (string, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.waiting.reason, l.waiting.since
}

func (l *Link) setDiskWait(w diskWait) {
	l.mu.Lock()
	l.waiting = w
	l.mu.Unlock()
}

// awaitSpace returns once the data dir has room for the next session,
// looking every spaceCheckEvery, or when ctx ends. Meanwhile the link
// stays down, and the wait is logged once, with its reason.
func (l *Link) awaitSpace(ctx context.Context) {
	if l.cfg.DataDir == "" {
		return
	}
	every := l.cfg.spaceEvery
	if every <= 0 {
		every = spaceCheckEvery
	}
	var t *time.Ticker
	for {
		free, err := FreeBytes(l.cfg.DataDir)
		need, why := l.spaceNeed()
		if err != nil || free >= need {
			if t != nil {
				t.Stop()
				l.setDiskWait(diskWait{})
				l.log.Info().Int64("free_bytes", free).Int64("needed_bytes", need).
					Msg("the data dir has room again; the upstream link reconnects")
			}
			return
		}
		if t == nil {
			reason := fmt.Sprintf("data dir full (%d bytes free, %d needed): %s; the upstream link stays down and does not PSYNC until there is room, checked every %s",
				free, need, why, every)
			l.setDiskWait(diskWait{reason: reason, since: time.Now()})
			l.setState(fanout.LinkConnect, "waiting for space in the data dir")
			l.log.Error().Int64("free_bytes", free).Int64("needed_bytes", need).Str("data_dir", l.cfg.DataDir).
				Msg(reason)
			t = time.NewTicker(every)
		}
		select {
		case <-ctx.Done():
			t.Stop()
			l.setDiskWait(diskWait{})
			return
		case <-t.C:
		}
	}
}

// roomForRDB says whether the data dir can hold a refreshed snapshot
// beside the current one. A refresh forks the master: none is asked for
// when its RDB could not be stored. The wait is logged once.
func (r *Refresher) roomForRDB() bool {
	l := r.link
	st := l.store.State()
	if l.cfg.DataDir == "" || st.Snapshot == nil {
		return true
	}
	free, err := FreeBytes(l.cfg.DataDir)
	need := st.Snapshot.Size + spaceMargin
	if err != nil || free >= need {
		r.noSpace = false
		return true
	}
	if !r.noSpace {
		l.log.Warn().Int64("free_bytes", free).Int64("needed_bytes", need).Str("data_dir", l.cfg.DataDir).
			Msg("snapshot refresh held: the data dir cannot hold another RDB of the last one's size, and a refresh forks the master; it starts once there is room")
	}
	r.noSpace = true
	return false
}

// noteRDBTooLarge remembers, after a full sync's RDB did not fit in the
// data dir, how much room the next one needs: the announced size, or
// twice what a diskless transfer had brought by then. Without it, a
// larger RDB than the stored snapshot would fork the master again at
// each attempt.
func (l *Link) noteRDBTooLarge(err error) {
	if !isDiskFull(err) {
		return
	}
	need := l.Sync.Total.Load()
	if need <= 0 {
		need = 2 * l.Sync.Done.Load()
	}
	l.rdbNeed.Store(max(need, l.rdbNeed.Load()))
}
