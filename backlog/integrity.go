package backlog

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// ErrDamaged means stored bytes did not match their checksum. They were not
// sent; the log was cut before them and upstream resends them.
var ErrDamaged = errors.New("stored bytes do not match their checksum")

// damage is a checksum mismatch found while reading records to send.
type damage struct{ problem string }

func (d *damage) Error() string { return d.problem }

// damaged handles a checksum mismatch in seg: nothing from the start of seg
// on is served any more; its files and the later segments' are moved aside,
// and the upstream link resumes with PSYNC from seg's first offset, so the
// master resends the bytes (or, when it no longer can, full-syncs the proxy).
func (l *Log) damaged(seg *segment, problem string) {
	path := segmentPath(l.dir, seg.first)
	l.mu.RLock()
	current := false
	for _, s := range l.segs {
		current = current || s == seg
	}
	l.mu.RUnlock()
	if !current {
		// Cut already (by another reader or the scrub, which logged it),
		// or removed by retention while a reader held it open: the bytes
		// are not sent either way, and this reader's find is logged.
		l.log.Error().Str("file", path).Str("problem", problem).
			Msg("backlog segment damaged: its bytes are not sent; it is no longer in the log (cut already, or removed by retention), so the replica reading it is dropped and resyncs")
		return
	}
	l.log.Error().Str("file", path).Str("problem", problem).Int64("cut_at", seg.first).
		Msg("backlog segment damaged: its bytes are not served; the log is cut at the segment's first offset, the files from there on are moved aside, and the upstream link resumes with PSYNC from there")
	l.noteCulprit(seg.first)
	if err := l.cut(seg.first, true); err != nil && !errors.Is(err, ErrClosed) {
		l.log.Error().Err(err).Msg("cutting the log at the damage failed; nothing is appended until the cut is finished, retried each time the link resumes")
	}
	l.opt.damaged.bound()
}

// afterSyncFailure cuts the log back to its durable offset: the bytes after
// it may never reach the disk, whatever a retried fsync reports.
func (l *Log) afterSyncFailure(cause error) {
	to := l.durable.Load()
	l.log.Error().Err(cause).Int64("durable", to).
		Msg("fsync failed: nothing past the durable offset is acknowledged; the log is cut back to it and the upstream link resumes with PSYNC from there")
	if err := l.cut(to, false); err != nil && !errors.Is(err, ErrClosed) {
		l.log.Error().Err(err).Msg("cutting the log back after a failed fsync failed; nothing is appended until the cut is finished, retried each time the link resumes")
	}
}

// cut drops every byte from offset to on: segments starting there or later
// are removed (moved aside when damaged), the one holding to is truncated.
// The writer then gets ErrRewound until it resumes from the new end.
func (l *Log) cut(to int64, damaged bool) error {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	defer l.unparkAll(false) // after mu: followers must look at the log again
	l.syncer.syncMu.Lock()
	defer l.syncer.syncMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	l.syncer.mu.Lock()
	failed := l.syncer.failed
	l.syncer.mu.Unlock()
	if failed {
		// Whatever the reason for this cut, it ends the failure episode,
		// so it must also drop what the failed fsync covered.
		to = min(to, l.durable.Load())
	} else if !damaged {
		return nil // the failure was already handled by an earlier cut
	}
	to = min(to, l.end)
	err := l.cutFiles(to, damaged)
	l.broken = nil
	if err != nil {
		l.broken = fmt.Errorf("log cut at %d failed: %w", to, err)
	}
	if l.durable.Load() > to {
		l.durable.Store(to)
	}
	l.end = min(l.end, to)
	if len(l.segs) == 0 {
		l.first = l.end
	}
	l.cuts.Add(1)
	if !l.resume {
		l.resume = true
		close(l.rewound)
	}
	l.dropRecent()
	close(l.changed)
	l.changed = make(chan struct{})
	l.syncer.cleared(l.end)
	l.times.cutFrom(l.end)
	return err
}

// cutWork is the file work of a cut. When it fails it is kept, and redone
// when the writer next resumes: the disk may be back by then.
type cutWork struct {
	damaged bool       // move the dropped files aside rather than remove them
	drop    []*segment // segments whose files go
	trunc   *segment   // segment whose files are cut to its size; nil: none
}

// cutFiles does the file work of a cut; the caller holds every lock.
func (l *Log) cutFiles(to int64, damaged bool) error {
	if l.active != nil {
		l.active.close()
		l.active = nil
	}
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].end() > to })
	keep, drop := l.segs[:i], l.segs[i:]
	w := &cutWork{damaged: damaged}
	if len(drop) > 0 && drop[0].first < to {
		w.trunc, drop = drop[0], drop[1:]
	}
	w.drop = drop
	if p := l.unfinished; p != nil { // this cut takes over what the last one left
		w.damaged = w.damaged || p.damaged
		w.drop = append(p.drop, w.drop...)
		if w.trunc == nil && p.trunc != nil && p.trunc.end() <= to {
			w.trunc = p.trunc
		}
	}
	l.keepRetired(to)
	// The log ends at to from here on, even if the file work below fails:
	// the bytes before to are on disk and unchanged whatever happens to the
	// ones after, so readers keep being served them.
	l.segs = keep
	if w.trunc != nil {
		if w.trunc.end() > to {
			w.trunc.size = to - w.trunc.first
			w.trunc.synced.Store(false)
			l.segs = append(l.segs, w.trunc)
		}
	}
	l.unfinished = w
	if err := l.doCut(w); err != nil {
		return err
	}
	l.unfinished = nil
	return nil
}

// doCut carries out w; redoing it after a partial failure is harmless.
func (l *Log) doCut(w *cutWork) error {
	if err := l.removeSegments(w.drop, w.damaged); err != nil {
		return err
	}
	w.drop = nil
	if w.trunc != nil {
		if err := l.truncate(w.trunc, w.trunc.size); err != nil {
			return err
		}
		w.trunc = nil
	}
	if err := syncDir(l.dir, l.opt.Sync); err != nil {
		return err
	}
	if n := len(l.segs); n > 0 && l.segs[n-1].size < l.opt.SegmentBytes {
		return l.reopenActive(l.segs[n-1])
	}
	return nil
}

// finishCut redoes the file work of a cut that failed; once it succeeds,
// appends are accepted again.
func (l *Log) finishCut() {
	l.mu.RLock()
	w := l.unfinished
	l.mu.RUnlock()
	if w == nil {
		return // the usual case: no fsync waited on
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	l.syncer.syncMu.Lock()
	defer l.syncer.syncMu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	w = l.unfinished
	if w == nil || l.closed {
		return
	}
	if err := l.doCut(w); err != nil {
		l.broken = fmt.Errorf("log cut at %d failed: %w", l.end, err)
		l.log.Error().Err(err).Int64("end", l.end).
			Msg("the cut of the log still cannot be finished; nothing is appended until it is")
		return
	}
	l.unfinished, l.broken = nil, nil
	l.log.Info().Int64("end", l.end).Msg("the cut of the log is finished; appends resume from its end")
}

// keepRetired closes the rolled segments awaiting their fsync that the cut
// at to removes or truncates (truncate syncs what it keeps). The ones kept
// whole stay queued: the next sync must still cover their bytes before
// durable passes them.
func (l *Log) keepRetired(to int64) {
	l.syncer.mu.Lock()
	defer l.syncer.mu.Unlock()
	var kept []*activeSegment
	for _, a := range l.syncer.retired {
		if a.seg.end() <= to {
			kept = append(kept, a)
			continue
		}
		a.close()
	}
	l.syncer.retired = kept
}

func (l *Log) removeSegments(segs []*segment, damaged bool) error {
	if len(segs) == 0 {
		return nil
	}
	var paths []string
	for _, s := range segs {
		path := segmentPath(l.dir, s.first)
		paths = append(paths, path, indexPath(path))
	}
	if damaged {
		dir, err := moveAside(l.opt.DamagedDir, paths...)
		if err == nil {
			l.markCulprits(dir, segs)
			l.log.Error().Int("segments", len(segs)).Int64("from", segs[0].first).Str("moved_to", dir).
				Msg("backlog segments moved aside")
		}
		return err
	}
	for _, s := range segs {
		if err := removeSegmentFiles(segmentPath(l.dir, s.first)); err != nil {
			return err
		}
	}
	return nil
}

// truncate cuts seg's files to size bytes (a record boundary) and makes that
// durable; the caller has already set seg.size.
func (l *Log) truncate(seg *segment, size int64) error {
	path := segmentPath(l.dir, seg.first)
	recs, err := recordsUpTo(path, size)
	if err != nil {
		return err
	}
	if err := truncateSegment(path, size, recs); err != nil {
		return err
	}
	a, err := openSegmentFiles(path)
	if err != nil {
		return err
	}
	err = a.sync(l.opt.Sync)
	a.close()
	return err
}

// moveAside moves files into a new timestamped directory under root, for an
// operator to inspect: nothing found damaged is deleted.
func moveAside(root string, paths ...string) (string, error) {
	dir, err := asideDir(root)
	if err != nil {
		return "", err
	}
	for _, p := range paths {
		if err := os.Rename(p, filepath.Join(dir, filepath.Base(p))); err != nil && !errors.Is(err, os.ErrNotExist) {
			return dir, fmt.Errorf("move %s aside to %s: %w", p, dir, err)
		}
	}
	return dir, nil
}

// copyAside keeps a copy of files that are then repaired in place.
func copyAside(root string, paths ...string) (string, error) {
	dir, err := asideDir(root)
	if err != nil {
		return "", err
	}
	for _, p := range paths {
		if err := copyFile(p, filepath.Join(dir, filepath.Base(p))); err != nil {
			return dir, err
		}
	}
	return dir, nil
}

func asideDir(root string) (string, error) {
	if root == "" {
		return "", errors.New("no directory for damaged files configured")
	}
	base := filepath.Join(root, time.Now().UTC().Format("20060102T150405.000000000Z"))
	for i := 0; ; i++ {
		dir := base
		if i > 0 {
			dir = fmt.Sprintf("%s-%d", base, i)
		}
		if err := os.MkdirAll(root, 0o700); err != nil {
			return "", fmt.Errorf("create %s: %w", root, err)
		}
		err := os.Mkdir(dir, 0o700)
		if err == nil {
			return dir, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("create %s: %w", dir, err)
		}
	}
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return fmt.Errorf("copy %s aside: %w", from, err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("copy %s aside: %w", from, err)
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("copy %s to %s: %w", from, to, err)
	}
	return nil
}
