package backlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// NoReplID is what Redis reports as master_replid2 when there is no second ID.
const NoReplID = "0000000000000000000000000000000000000000"

// Meta is the replication identity the proxy persists: the IDs it shares with
// its master, where the current log generation starts, and which snapshot it
// serves. The end offset is not stored here: it is derived from the log itself,
// which is what makes a crash between an append and a meta write harmless.
type Meta struct {
	ReplID       string        `json:"replid"`
	ReplID2      string        `json:"replid2"`
	SecondOffset int64         `json:"second_offset"` // -1 when ReplID2 is unset
	Epoch        uint64        `json:"epoch"`         // log generation: a new history gets a new directory
	LogStart     int64         `json:"log_start"`     // offset of the first byte of this generation
	Snapshot     *SnapshotInfo `json:"snapshot,omitempty"`
	// History holds the older snapshots of this generation kept under
	// snapshot.keep, oldest first, for point-in-time restores. Each still
	// continues in the log: retention deletes a snapshot with its stream.
	History []SnapshotInfo `json:"history,omitempty"`
}

// Snapshots lists every kept snapshot, oldest first, the current one last.
func (m Meta) Snapshots() []SnapshotInfo {
	out := append([]SnapshotInfo(nil), m.History...)
	if m.Snapshot != nil {
		out = append(out, *m.Snapshot)
	}
	return out
}

// SnapshotInfo names a stored RDB and the replication position it represents.
type SnapshotInfo struct {
	File   string `json:"file"`
	ReplID string `json:"replid"`
	Offset int64  `json:"offset"` // the FULLRESYNC offset: the stream continues at Offset+1
	Size   int64  `json:"size"`
	// CRC64 is the CRC-64 (Jones, as in RDB files) of the whole file, taken
	// as it was received, whatever the transfer's framing carried.
	CRC64 string `json:"crc64,omitempty"`
}

// metaEnvelope carries a checksum so that a torn or edited meta file is
// detected instead of trusted.
type metaEnvelope struct {
	Version int             `json:"version"`
	Meta    json.RawMessage `json:"meta"`
	CRC32C  uint32          `json:"crc32c"`
}

const metaVersion = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrNoMeta means the data directory has never held a replication history.
var ErrNoMeta = errors.New("no meta file")

// ErrCorrupt marks a meta file whose content cannot be trusted, as opposed
// to one that could not be read at all (permissions, I/O), which an
// operator must fix rather than have the history thrown away.
var ErrCorrupt = errors.New("corrupt")

func readMeta(path string) (Meta, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Meta{}, ErrNoMeta
	}
	if err != nil {
		return Meta{}, fmt.Errorf("read meta %s: %w", path, err)
	}
	var env metaEnvelope
	if err := json.Unmarshal(raw, &env); err != nil {
		return Meta{}, fmt.Errorf("meta %s is %w: %v", path, ErrCorrupt, err)
	}
	if env.Version != metaVersion {
		return Meta{}, fmt.Errorf("meta %s has version %d, this build reads %d", path, env.Version, metaVersion)
	}
	// The checksum covers the compact encoding: indentation is for humans.
	var compact bytes.Buffer
	if err := json.Compact(&compact, env.Meta); err != nil {
		return Meta{}, fmt.Errorf("meta %s is %w: %v", path, ErrCorrupt, err)
	}
	if got := crc32.Checksum(compact.Bytes(), castagnoli); got != env.CRC32C {
		return Meta{}, fmt.Errorf("meta %s is %w: checksum %08x, stored %08x", path, ErrCorrupt, got, env.CRC32C)
	}
	var m Meta
	if err := json.Unmarshal(env.Meta, &m); err != nil {
		return Meta{}, fmt.Errorf("meta %s is %w: %v", path, ErrCorrupt, err)
	}
	if err := m.validate(); err != nil {
		return Meta{}, fmt.Errorf("meta %s is %w: %v", path, ErrCorrupt, err)
	}
	return m, nil
}

func (m Meta) validate() error {
	if len(m.ReplID) != 40 {
		return fmt.Errorf("replid %q is not 40 characters", m.ReplID)
	}
	if len(m.ReplID2) != 40 {
		return fmt.Errorf("replid2 %q is not 40 characters", m.ReplID2)
	}
	if m.LogStart < 1 {
		return fmt.Errorf("log_start %d is below 1", m.LogStart)
	}
	return nil
}

func writeMeta(path string, m Meta, sync SyncFunc) error {
	body, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode meta: %w", err)
	}
	env := metaEnvelope{Version: metaVersion, Meta: body, CRC32C: crc32.Checksum(body, castagnoli)}
	raw, err := json.MarshalIndent(env, "", "  ")
	if err != nil {
		return fmt.Errorf("encode meta: %w", err)
	}
	return writeFileAtomic(path, append(raw, '\n'), sync)
}

// writeFileAtomic replaces path so that a crash leaves either the old or the
// new content, never a mix: temp file, fsync, rename, fsync of the directory.
func writeFileAtomic(path string, data []byte, sync SyncFunc) error {
	tmp := path + ".tmp"
	f, err := createTemp(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := sync(f); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return syncDir(filepath.Dir(path), sync)
}

func syncDir(dir string, sync SyncFunc) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := sync(d); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}
