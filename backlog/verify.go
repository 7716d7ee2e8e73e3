package backlog

import (
	"errors"
	"fmt"
)

// Report is what Verify found in a data dir.
type Report struct {
	Meta     Meta
	Segments int
	First    int64
	End      int64
	Problems []string // each names the file at fault
	Actions  []string // what the proxy does about each problem, in the same order
}

func (r *Report) add(problem, action string) {
	r.Problems = append(r.Problems, problem)
	r.Actions = append(r.Actions, action)
}

const resendNote = " (a full sync instead if the master no longer holds that offset)"

// Verify checks everything the proxy relies on, without changing the data
// dir: the meta checksum, the size and CRC-64 of the snapshot and of every
// older kept one (restore's bases), and every segment's records against
// their CRCs. It is safe beside a running proxy.
// For each problem it says what the proxy does about it.
func Verify(dir string) (Report, error) {
	var rep Report
	at := Layout(dir)
	m, err := readMeta(at.Meta())
	if errors.Is(err, ErrCorrupt) {
		rep.add(err.Error(), "at start, the proxy moves meta.json, the backlog and the snapshot into damaged/ and full-syncs from its master")
		return rep, nil
	}
	if err != nil {
		return rep, err
	}
	rep.Meta = m
	if err := checkSnapshot(at.Snapshots(), m.Snapshot, true, nil); err != nil {
		rep.add(err.Error(), "at start, the proxy moves the snapshot and its backlog into damaged/ and full-syncs from its master; a running proxy stops serving it, and replicas that need a full sync wait for a fresh one from its master")
	}
	for _, o := range m.History {
		if err := checkSnapshot(at.Snapshots(), &o, true, nil); err != nil {
			rep.add(fmt.Sprintf("kept snapshot at offset %d: %v", o.Offset, err), keptSnapshotAction(o, err))
		}
	}
	logDir := at.LogDir(m.Epoch)
	segs, err := scanSegments(logDir)
	if err != nil {
		return rep, err
	}
	rep.Segments, rep.First, rep.End = len(segs), m.LogStart, m.LogStart
	for i, s := range segs {
		path := segmentPath(logDir, s.first)
		if i == 0 {
			rep.First, rep.End = s.first, s.first
		}
		if s.first != rep.End {
			rep.add(fmt.Sprintf("%s: gap, previous segment ends at %d", path, rep.End),
				fmt.Sprintf("at start, the proxy moves this segment and those after it into damaged/ and resumes with PSYNC from offset %d%s", rep.End, resendNote))
			break
		}
		chk, err := verifySegment(path, false, nil)
		if err != nil {
			return rep, err
		}
		rep.End = s.first + chk.valid
		if chk.problem != "" {
			rep.add(fmt.Sprintf("%s: %s", path, chk.problem), segmentAction(s.first, chk, i == len(segs)-1))
			break
		}
	}
	return rep, nil
}

// keptSnapshotAction says what becomes of a damaged older snapshot: only
// restore reads one, and passes over it.
func keptSnapshotAction(o SnapshotInfo, err error) string {
	restore := fmt.Sprintf("replication is unaffected (only the current snapshot is served); replproxy restore starts a target at or after offset %d from an older intact kept snapshot instead, or, with none, names this file and refuses the target", o.Offset)
	if errors.Is(err, ErrSnapshotDamaged) {
		return restore + "; the file stays until retention deletes it with its stream"
	}
	return restore + "; at start, the proxy drops it from the kept snapshots"
}

// segmentAction says what the proxy does about a damaged segment, following
// recovery (OpenLog), the check at every send, and the scrub.
func segmentAction(first int64, chk segmentCheck, last bool) string {
	cutAt := first + chk.valid
	switch {
	case chk.unverifiable:
		return fmt.Sprintf("at start, the proxy moves this segment and those after it into damaged/ and resumes with PSYNC from offset %d%s", first, resendNote)
	case chk.mismatch && chk.sealed && !last:
		return fmt.Sprintf("this segment was fsynced whole, so recovery trusts its sizes; the proxy finds the mismatch before sending these bytes (at every read for a replica, or by the background scrub), moves this segment and those after it into damaged/ and resumes with PSYNC from offset %d%s", first, resendNote)
	case chk.mismatch:
		return fmt.Sprintf("at start, the proxy keeps a copy of this segment in damaged/, cuts it at its last good record (offset %d), moves the segments after it into damaged/ and resumes with PSYNC from there%s", cutAt, resendNote)
	}
	return fmt.Sprintf("at start, the proxy cuts this segment at its last good record (offset %d), moves the segments after it into damaged/ and resumes with PSYNC from there%s", cutAt, resendNote)
}
