package restore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/hdt3213/rdb/crc64jones"

	"github.com/replproxy/replproxy/backlog"
)

// source is a data dir held for reading beside a live proxy: the kept
// snapshots opened (so a newer adoption or retention deleting them changes
// nothing), and the stream from the oldest of them held the same way.
type source struct {
	dataDir string
	meta    backlog.Meta
	logDir  string
	snaps   []heldSnapshot // oldest first
	stream  *backlog.StreamReader
	times   []backlog.TimePoint
}

type heldSnapshot struct {
	info backlog.SnapshotInfo
	f    *os.File
}

// openSource reads the meta, then holds what it names. A snapshot gone
// meanwhile (pruned by retention, replaced) is skipped; if the stream no
// longer continues the oldest one, the next one is tried.
func openSource(dataDir string) (*source, error) {
	var lastErr error
	for try := 0; try < 3; try++ {
		src, err := openSourceOnce(dataDir)
		if err == nil || !errors.Is(err, backlog.ErrTrimmed) {
			return src, err
		}
		lastErr = err
	}
	return nil, lastErr
}

func openSourceOnce(dataDir string) (*source, error) {
	m, err := backlog.ReadMeta(dataDir)
	if err != nil {
		return nil, fmt.Errorf("data dir %s: %w", dataDir, err)
	}
	src := &source{dataDir: dataDir, meta: m, logDir: backlog.Layout(dataDir).LogDir(m.Epoch)}
	for _, info := range m.Snapshots() {
		f, err := os.Open(backlog.Layout(dataDir).Snapshot(info.File))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			src.close()
			return nil, fmt.Errorf("open snapshot: %w", err)
		}
		src.snaps = append(src.snaps, heldSnapshot{info: info, f: f})
	}
	if len(src.snaps) == 0 {
		return nil, fmt.Errorf("data dir %s holds no snapshot to start from: %w", dataDir, backlog.ErrTrimmed)
	}
	for len(src.snaps) > 0 {
		src.stream, err = backlog.OpenStream(src.logDir, src.snaps[0].info.Offset+1)
		if err == nil {
			break
		}
		if !errors.Is(err, backlog.ErrTrimmed) {
			src.close()
			return nil, err
		}
		src.snaps[0].f.Close()
		src.snaps = src.snaps[1:]
	}
	if src.stream == nil {
		src.close()
		return nil, fmt.Errorf("no kept snapshot continues in the backlog of %s: %w", dataDir, backlog.ErrTrimmed)
	}
	src.times, _ = backlog.ReadTimeIndex(src.logDir) // times are a help: restore by offset works without them
	return src, nil
}

func (s *source) close() {
	for _, h := range s.snaps {
		h.f.Close()
	}
	if s.stream != nil {
		s.stream.Close()
	}
}

// end is one past the last whole, verified byte held.
func (s *source) end() int64 {
	_, end := s.stream.Bounds()
	return end
}

// newestAtOrBefore returns the newest held snapshot whose offset is at or
// before off: the stream after it leads to off.
func (s *source) newestAtOrBefore(off int64) (heldSnapshot, error) {
	for i := len(s.snaps) - 1; i >= 0; i-- {
		if s.snaps[i].info.Offset <= off {
			return s.snaps[i], nil
		}
	}
	return heldSnapshot{}, fmt.Errorf("no kept snapshot at or before offset %d: the oldest is at %d (keep more with snapshot.keep, and a larger backlog.max_bytes)", off, s.snaps[0].info.Offset)
}

// units reads the units of the stream in [from, to), from must be a
// command boundary (a snapshot's offset+1, or the end of a unit).
func (s *source) units(from, to int64) (*parser, error) {
	r, err := s.stream.Range(from, to)
	if err != nil {
		return nil, err
	}
	return newParser(r, from), nil
}

// timeOf dates an offset from the time index; zero when it does not.
func (s *source) timeOf(off int64) time.Time {
	t, _ := backlog.TimeOf(s.times, off)
	return t
}

// intactAtOrBefore returns the newest held snapshot at or before off whose
// size and CRC-64 match the meta. A damaged one is passed over for an
// older one, with a note naming it: the older one only means replaying
// more of the stream. With none older, the error names the damaged files
// and says which targets can still be restored.
func (s *source) intactAtOrBefore(off int64, res *Result) (heldSnapshot, error) {
	var damaged []string
	for i := len(s.snaps) - 1; i >= 0; i-- {
		h := s.snaps[i]
		if h.info.Offset > off {
			continue
		}
		err := s.checkIntact(h)
		if err == nil {
			for _, d := range damaged {
				res.Notes = append(res.Notes, fmt.Sprintf("%s: started from the older kept snapshot %s instead, which replays more of the stream (replproxy verify --data-dir %s lists the damage)", d, h.info.File, s.dataDir))
			}
			return h, nil
		}
		if !errors.Is(err, backlog.ErrSnapshotDamaged) {
			return heldSnapshot{}, err
		}
		damaged = append(damaged, strings.TrimSuffix(err.Error(), ": "+backlog.ErrSnapshotDamaged.Error()))
	}
	if len(damaged) == 0 {
		return s.newestAtOrBefore(off)
	}
	msg := fmt.Sprintf("%s; no older kept snapshot is intact, so the state at offset %d cannot be rebuilt from this data dir", strings.Join(damaged, "; "), off)
	for _, h := range s.snaps {
		if h.info.Offset > off {
			msg += fmt.Sprintf(". Targets at or after offset %d can still be restored, from the kept snapshot %s", h.info.Offset, h.info.File)
			break
		}
	}
	msg += fmt.Sprintf(". replproxy verify --data-dir %s lists every damaged file; an older copy of the data dir (a backup) may hold this snapshot intact", s.dataDir)
	return heldSnapshot{}, fmt.Errorf("%s: %w", msg, backlog.ErrSnapshotDamaged)
}

// checkIntact reads a held snapshot whole against the size and CRC-64 the
// meta recorded when it was received.
func (s *source) checkIntact(h heldSnapshot) error {
	path := backlog.Layout(s.dataDir).Snapshot(h.info.File)
	crc := crc64jones.New()
	n, err := io.Copy(crc, io.NewSectionReader(h.f, 0, h.info.Size+1))
	if err != nil {
		return fmt.Errorf("read kept snapshot %s: %w", path, err)
	}
	if n != h.info.Size {
		return fmt.Errorf("kept snapshot %s is damaged: %d bytes, the meta records %d: %w", path, n, h.info.Size, backlog.ErrSnapshotDamaged)
	}
	if got := fmt.Sprintf("%016x", crc.Sum64()); h.info.CRC64 != "" && got != h.info.CRC64 {
		// An RDB ends with its own CRC-64, so an intact one's CRC-64 over
		// the whole file is 0: the zeros recorded are no mistake.
		how := ""
		if strings.Trim(h.info.CRC64, "0") == "" {
			how = ", as every intact RDB with its trailing checksum has"
		}
		return fmt.Errorf("kept snapshot %s is damaged: its CRC-64 is %s, not the %s recorded when it was received%s: %w", path, got, h.info.CRC64, how, backlog.ErrSnapshotDamaged)
	}
	return nil
}
