package proxy

import (
	"bufio"
	"fmt"
	"github.com/replproxy/replproxy/rdbmeta"
	"io"
	"os"
	"sort"
	"time"

	"github.com/hdt3213/rdb/core"
	"github.com/hdt3213/rdb/model"

	"github.com/replproxy/replproxy/backlog"
)

// InspectReport is what `replproxy inspect` shows of a data dir, offline.
type InspectReport struct {
	DataDir      string          `json:"data_dir"`
	ReplID       string          `json:"replid"`
	ReplID2      string          `json:"replid2"`
	SecondOffset int64           `json:"second_offset"`
	Snapshot     *SnapshotReport `json:"snapshot,omitempty"`
	Backlog      BacklogReport   `json:"backlog"`
	Problems     []string        `json:"problems,omitempty"`
	Generated    time.Time       `json:"generated"`
}

// SnapshotReport describes the stored RDB. MemoryBytes is hdt3213/rdb's
// estimate of what the keys take in Redis' memory (its memory report's
// per-key figures, summed), not the file size.
type SnapshotReport struct {
	File        string            `json:"file"`
	Offset      int64             `json:"offset"`
	Bytes       int64             `json:"bytes"`
	WrittenAt   time.Time         `json:"written_at"`
	RDBVersion  int               `json:"rdb_version"`
	RDBHeader   string            `json:"rdb_header"` // REDIS0012, VALKEY080, ...
	Aux         map[string]string `json:"aux"`        // redis-ver, redis-bits, ctime, used-mem...
	Keys        int64             `json:"keys"`
	Expiring    int64             `json:"expiring_keys"`
	MemoryBytes int64             `json:"memory_estimate_bytes"`
	DBs         []DBStats         `json:"dbs"`
	Biggest     []KeyStats        `json:"biggest_keys"`
	Incomplete  string            `json:"incomplete,omitempty"` // why the scan stopped early
}

// DBStats counts one database's keys by type.
type DBStats struct {
	DB          int              `json:"db"`
	Keys        int64            `json:"keys"`
	MemoryBytes int64            `json:"memory_estimate_bytes"`
	Types       map[string]int64 `json:"types"`
}

// KeyStats is one key of the biggest-keys list.
type KeyStats struct {
	DB          int    `json:"db"`
	Key         string `json:"key"`
	Type        string `json:"type"`
	MemoryBytes int    `json:"memory_estimate_bytes"`
	Elements    int    `json:"elements"`
}

// BacklogReport is the stored stream: its offsets and when they arrived.
type BacklogReport struct {
	Epoch         uint64     `json:"epoch"`
	Segments      int        `json:"segments"`
	FirstOffset   int64      `json:"first_offset"`
	EndOffset     int64      `json:"end_offset"` // next offset to be written: the last byte is EndOffset-1
	Bytes         int64      `json:"bytes"`
	FirstByteTime *time.Time `json:"first_byte_time,omitempty"`
	LastByteTime  *time.Time `json:"last_byte_time,omitempty"`
}

// Inspect reads a data dir without changing it or taking its lock, so it
// can run beside a live proxy. top bounds the biggest-keys list.
func Inspect(dataDir string, top int) (InspectReport, error) {
	rep := InspectReport{DataDir: dataDir, Generated: time.Now()}
	m, err := backlog.ReadMeta(dataDir)
	if err != nil {
		return rep, err
	}
	rep.ReplID, rep.ReplID2, rep.SecondOffset = m.ReplID, m.ReplID2, m.SecondOffset
	if err := rep.inspectBacklog(dataDir, m); err != nil {
		return rep, err
	}
	if m.Snapshot != nil {
		snap, err := inspectSnapshot(dataDir, *m.Snapshot, top)
		if err != nil {
			rep.Problems = append(rep.Problems, err.Error())
		} else {
			rep.Snapshot = snap
		}
	}
	return rep, nil
}

func (rep *InspectReport) inspectBacklog(dataDir string, m backlog.Meta) error {
	logDir := backlog.Layout(dataDir).LogDir(m.Epoch)
	ext, err := backlog.ReadExtent(logDir, m.LogStart)
	if err != nil {
		return err
	}
	rep.Backlog = BacklogReport{Epoch: m.Epoch, Segments: ext.Segments, FirstOffset: ext.First, EndOffset: ext.End, Bytes: ext.End - ext.First}
	if ext.End == ext.First {
		return nil
	}
	points, err := backlog.ReadTimeIndex(logDir)
	if err != nil {
		rep.Problems = append(rep.Problems, fmt.Sprintf("no byte times: %v", err))
		return nil
	}
	if t, ok := backlog.TimeOf(points, ext.First); ok {
		rep.Backlog.FirstByteTime = &t
	}
	if t, ok := backlog.TimeOf(points, ext.End-1); ok {
		// The last segment's mtime is the exact time of its last write.
		last := t
		if ext.LastModified.After(last) {
			last = ext.LastModified
		}
		rep.Backlog.LastByteTime = &last
	}
	return nil
}

func inspectSnapshot(dataDir string, info backlog.SnapshotInfo, top int) (*SnapshotReport, error) {
	path := backlog.Layout(dataDir).Snapshot(info.File)
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open snapshot: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat snapshot %s: %w", path, err)
	}
	snap := &SnapshotReport{File: info.File, Offset: info.Offset, Bytes: st.Size(), WrittenAt: st.ModTime(), Aux: map[string]string{}}
	if meta, err := rdbmeta.Read(io.NewSectionReader(f, 0, st.Size())); meta.Magic != "" || err == nil {
		snap.RDBVersion, snap.RDBHeader = meta.Version, meta.Header()
		// Our reader knows every header; the pinned decoder may stop
		// before the aux fields of a newer format.
		for k, v := range meta.Aux {
			snap.Aux[k] = v
		}
	}
	byDB := map[int]*DBStats{}
	dec := core.NewDecoder(bufio.NewReaderSize(io.NewSectionReader(f, 0, st.Size()), 1<<20)).WithSpecialOpCode()
	perr := dec.Parse(func(o model.RedisObject) bool {
		snap.add(o, byDB, top)
		return true
	})
	if perr != nil {
		// Newer opcodes stop the decoder; what was read is still reported.
		snap.Incomplete = perr.Error()
	}
	for _, db := range byDB {
		snap.DBs = append(snap.DBs, *db)
	}
	sort.Slice(snap.DBs, func(i, j int) bool { return snap.DBs[i].DB < snap.DBs[j].DB })
	return snap, nil
}

func (s *SnapshotReport) add(o model.RedisObject, byDB map[int]*DBStats, top int) {
	switch obj := o.(type) {
	case *model.AuxObject:
		s.Aux[obj.Key] = obj.Value
		return
	case *model.DBSizeObject, *model.FunctionsObject:
		return
	}
	db := byDB[o.GetDBIndex()]
	if db == nil {
		db = &DBStats{DB: o.GetDBIndex(), Types: map[string]int64{}}
		byDB[o.GetDBIndex()] = db
	}
	size := o.GetSize()
	db.Keys++
	db.Types[o.GetType()]++
	db.MemoryBytes += int64(size)
	s.Keys++
	s.MemoryBytes += int64(size)
	if o.GetExpiration() != nil {
		s.Expiring++
	}
	s.keepBiggest(KeyStats{DB: o.GetDBIndex(), Key: o.GetKey(), Type: o.GetType(), MemoryBytes: size, Elements: o.GetElemCount()}, top)
}

// keepBiggest keeps the top keys by memory, sorted, biggest first.
func (s *SnapshotReport) keepBiggest(k KeyStats, top int) {
	if top <= 0 || (len(s.Biggest) == top && k.MemoryBytes <= s.Biggest[top-1].MemoryBytes) {
		return
	}
	i := sort.Search(len(s.Biggest), func(i int) bool { return s.Biggest[i].MemoryBytes < k.MemoryBytes })
	s.Biggest = append(s.Biggest, KeyStats{})
	copy(s.Biggest[i+1:], s.Biggest[i:])
	s.Biggest[i] = k
	if len(s.Biggest) > top {
		s.Biggest = s.Biggest[:top]
	}
}
