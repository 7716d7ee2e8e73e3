package restore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	src := &source{dataDir: dataDir, meta: m, logDir: backlog.LogDir(dataDir, m.Epoch)}
	for _, info := range m.Snapshots() {
		f, err := os.Open(filepath.Join(dataDir, "snapshot", info.File))
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

// copySnapshot copies a held snapshot to path, checking its CRC-64
// against the meta on the way: a damaged base is refused.
func copySnapshot(h heldSnapshot, path string) error {
	out, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	defer out.Close()
	crc := crc64jones.New()
	n, err := io.Copy(io.MultiWriter(out, crc), io.NewSectionReader(h.f, 0, h.info.Size))
	if err != nil {
		return fmt.Errorf("copy snapshot %s: %w", h.info.File, err)
	}
	if n != h.info.Size {
		return fmt.Errorf("snapshot %s: %d bytes, meta says %d: %w", h.info.File, n, h.info.Size, backlog.ErrSnapshotDamaged)
	}
	if got := fmt.Sprintf("%016x", crc.Sum64()); h.info.CRC64 != "" && got != h.info.CRC64 {
		return fmt.Errorf("snapshot %s: CRC-64 %s, meta says %s: %w", h.info.File, got, h.info.CRC64, backlog.ErrSnapshotDamaged)
	}
	return out.Close()
}
