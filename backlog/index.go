package backlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strings"
)

// Each segment has an index beside it: one record per append, holding the
// length and CRC-32C of the bytes appended. The stream itself stays raw in
// the segment, so replicas are still served with sendfile, while recovery
// can tell the last good byte after a crash and refuse corrupted data.
const (
	indexSuffix = ".idx"
	indexMagic  = "RPIDX001"
	recordSize  = 8
)

func indexPath(segPath string) string {
	return strings.TrimSuffix(segPath, segmentSuffix) + indexSuffix
}

func encodeRecord(dst []byte, data []byte) []byte {
	var rec [recordSize]byte
	binary.LittleEndian.PutUint32(rec[0:4], uint32(len(data)))
	binary.LittleEndian.PutUint32(rec[4:8], crc32.Checksum(data, castagnoli))
	return append(dst, rec[:]...)
}

type record struct {
	length uint32
	crc    uint32
}

// readIndex returns the complete records of an index file; a trailing
// partial record (a torn index write) is ignored.
func readIndex(path string) ([]record, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read index %s: %w", path, err)
	}
	if len(raw) < len(indexMagic) || string(raw[:len(indexMagic)]) != indexMagic {
		return nil, fmt.Errorf("index %s: bad header", path)
	}
	raw = raw[len(indexMagic):]
	recs := make([]record, 0, len(raw)/recordSize)
	for len(raw) >= recordSize {
		recs = append(recs, record{
			length: binary.LittleEndian.Uint32(raw[0:4]),
			crc:    binary.LittleEndian.Uint32(raw[4:8]),
		})
		raw = raw[recordSize:]
	}
	return recs, nil
}

// segmentCheck is what recovery found in one segment.
type segmentCheck struct {
	valid        int64 // bytes up to the end of the last good record
	records      int   // good records
	problem      string
	unverifiable bool // no usable index: nothing in the segment can be trusted
}

// verifySegment walks the index over the data file. With full set it checks
// every CRC; otherwise only that the records fit in the file.
func verifySegment(segPath string, full bool) (segmentCheck, error) {
	recs, err := readIndex(indexPath(segPath))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return segmentCheck{problem: "index file is missing", unverifiable: true}, nil
		}
		return segmentCheck{problem: err.Error(), unverifiable: true}, nil
	}
	f, err := os.Open(segPath)
	if err != nil {
		return segmentCheck{}, fmt.Errorf("open segment %s: %w", segPath, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return segmentCheck{}, fmt.Errorf("stat segment %s: %w", segPath, err)
	}
	var chk segmentCheck
	buf := make([]byte, 0, 64<<10)
	for _, r := range recs {
		end := chk.valid + int64(r.length)
		if end > info.Size() {
			chk.problem = fmt.Sprintf("torn tail: index covers %d bytes, file has %d", end, info.Size())
			return chk, nil
		}
		if full {
			if cap(buf) < int(r.length) {
				buf = make([]byte, r.length)
			}
			b := buf[:r.length]
			if _, err := f.ReadAt(b, chk.valid); err != nil && !errors.Is(err, io.EOF) {
				return chk, fmt.Errorf("read segment %s at %d: %w", segPath, chk.valid, err)
			}
			if crc32.Checksum(b, castagnoli) != r.crc {
				chk.problem = fmt.Sprintf("checksum mismatch in bytes %d..%d", chk.valid, end)
				return chk, nil
			}
		}
		chk.valid = end
		chk.records++
	}
	if info.Size() > chk.valid {
		chk.problem = fmt.Sprintf("%d bytes past the last indexed record", info.Size()-chk.valid)
	}
	return chk, nil
}

// repairSegment cuts a segment and its index to their last good record.
func repairSegment(segPath string, chk segmentCheck) error {
	if err := os.Truncate(segPath, chk.valid); err != nil {
		return fmt.Errorf("truncate segment %s to %d: %w", segPath, chk.valid, err)
	}
	idx := indexPath(segPath)
	if err := os.Truncate(idx, int64(len(indexMagic)+chk.records*recordSize)); err != nil {
		return fmt.Errorf("truncate index %s: %w", idx, err)
	}
	return nil
}

func createIndex(segPath string) (*os.File, error) {
	path := indexPath(segPath)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create index %s: %w", path, err)
	}
	if _, err := f.Write([]byte(indexMagic)); err != nil {
		f.Close()
		return nil, fmt.Errorf("write index %s: %w", path, err)
	}
	return f, nil
}
