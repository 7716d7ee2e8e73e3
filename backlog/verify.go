package backlog

import (
	"fmt"
	"path/filepath"
	"strconv"
)

// Report is what Verify found in a data dir.
type Report struct {
	Meta     Meta
	Segments int
	First    int64
	End      int64
	Problems []string // each names the file at fault
}

// Verify checks a data dir without changing it: the meta checksum, the
// snapshot's size, and every segment's records against their CRCs. It is
// safe beside a running proxy; recovery, not Verify, repairs.
func Verify(dir string) (Report, error) {
	var rep Report
	m, err := readMeta(filepath.Join(dir, "meta.json"))
	if err != nil {
		return rep, err
	}
	rep.Meta = m
	if err := checkSnapshot(filepath.Join(dir, "snapshot"), m.Snapshot); err != nil {
		rep.Problems = append(rep.Problems, err.Error())
	}
	logDir := filepath.Join(dir, "log", strconv.FormatUint(m.Epoch, 10))
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
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: gap, previous segment ends at %d", path, rep.End))
			break
		}
		chk, err := verifySegment(path, true)
		if err != nil {
			return rep, err
		}
		rep.End = s.first + chk.valid
		if chk.problem != "" {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: %s", path, chk.problem))
			break
		}
	}
	return rep, nil
}
