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
// the segment, so recovery can tell the last good byte after a crash, and
// every send from disk checks each record it reads before sending it.
//
// A segment whose data and index were fsynced after it was rolled gets one
// more record, the seal. Recovery trusts the sizes of a sealed segment and
// checks every CRC of any other: only a segment known to be on disk may skip
// the check (its bytes are still checked at every send).
const (
	indexSuffix = ".idx"
	indexMagic  = "RPIDX001"
	recordSize  = 8
	sealLength  = 0xFFFFFFFF
	sealCRC     = 0x5EA1ED00
)

func indexPath(segPath string) string {
	return strings.TrimSuffix(segPath, segmentSuffix) + indexSuffix
}

func encodeRecord(dst []byte, data []byte) []byte {
	return appendRecord(dst, uint32(len(data)), crc32.Checksum(data, castagnoli))
}

func appendRecord(dst []byte, length, crc uint32) []byte {
	var rec [recordSize]byte
	binary.LittleEndian.PutUint32(rec[0:4], length)
	binary.LittleEndian.PutUint32(rec[4:8], crc)
	return append(dst, rec[:]...)
}

type record struct {
	length uint32
	crc    uint32
}

func (r record) seal() bool { return r.length == sealLength && r.crc == sealCRC }

func decodeRecords(raw []byte, recs []record) []record {
	for len(raw) >= recordSize {
		recs = append(recs, record{
			length: binary.LittleEndian.Uint32(raw[0:4]),
			crc:    binary.LittleEndian.Uint32(raw[4:8]),
		})
		raw = raw[recordSize:]
	}
	return recs
}

// readIndex returns the complete records of an index file, and whether it
// ends with a seal; a trailing partial record (a torn index write) is ignored.
func readIndex(path string) (recs []record, sealed bool, err error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, false, fmt.Errorf("read index %s: %w", path, err)
	}
	if len(raw) < len(indexMagic) || string(raw[:len(indexMagic)]) != indexMagic {
		return nil, false, fmt.Errorf("index %s: bad header", path)
	}
	recs = decodeRecords(raw[len(indexMagic):], make([]record, 0, len(raw)/recordSize))
	if n := len(recs); n > 0 && recs[n-1].seal() {
		return recs[:n-1], true, nil
	}
	return recs, false, nil
}

// segmentCheck is what recovery found in one segment.
type segmentCheck struct {
	valid        int64 // bytes up to the end of the last good record
	records      int   // good records
	sealed       bool  // fsynced whole after its roll
	problem      string
	unverifiable bool // no usable index: nothing in the segment can be trusted
	mismatch     bool // a CRC did not match: damage, not a torn write
	pastIndex    bool // bytes follow the last indexed record: an append cut short
}

// verifySegment walks the index over the data file and checks every CRC,
// unless trustSeal is set and the segment is sealed: then only that the
// records fit in the file. pace, when set, is told each record's size before
// it is read (the scrub's rate limit).
func verifySegment(segPath string, trustSeal bool, pace func(int64) error) (segmentCheck, error) {
	recs, sealed, err := readIndex(indexPath(segPath))
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
	chk := segmentCheck{sealed: sealed}
	full := !(trustSeal && sealed)
	buf := make([]byte, 256<<10)
	for _, r := range recs {
		end := chk.valid + int64(r.length)
		if end > info.Size() {
			chk.problem = fmt.Sprintf("torn tail: index covers %d bytes, file has %d", end, info.Size())
			return chk, nil
		}
		if full {
			if pace != nil {
				if err := pace(int64(r.length)); err != nil {
					return chk, err
				}
			}
			ok, err := checkRecord(f, chk.valid, r, buf)
			if err != nil {
				return chk, fmt.Errorf("read segment %s at %d: %w", segPath, chk.valid, err)
			}
			if !ok {
				chk.problem = fmt.Sprintf("checksum mismatch in bytes %d..%d", chk.valid, end)
				chk.mismatch = true
				return chk, nil
			}
		}
		chk.valid = end
		chk.records++
	}
	if info.Size() > chk.valid {
		chk.problem = fmt.Sprintf("%d bytes past the last indexed record", info.Size()-chk.valid)
		chk.pastIndex = true
	}
	return chk, nil
}

// checkRecord reads one record's bytes at off through buf and compares
// their CRC-32C with the index.
func checkRecord(f *os.File, off int64, r record, buf []byte) (bool, error) {
	crc := uint32(0)
	for left := int64(r.length); left > 0; {
		b := buf[:min(left, int64(len(buf)))]
		n, err := f.ReadAt(b, off)
		crc = crc32.Update(crc, castagnoli, b[:n])
		off += int64(n)
		left -= int64(n)
		if err != nil && (!errors.Is(err, io.EOF) || left > 0) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return false, err
		}
	}
	return crc == r.crc, nil
}

// repairSegment cuts a segment and its index to their last good record.
func repairSegment(segPath string, chk segmentCheck) error {
	return truncateSegment(segPath, chk.valid, chk.records)
}

func truncateSegment(segPath string, size int64, records int) error {
	if err := os.Truncate(segPath, size); err != nil {
		return fmt.Errorf("truncate segment %s to %d: %w", segPath, size, err)
	}
	idx := indexPath(segPath)
	if err := os.Truncate(idx, int64(len(indexMagic)+records*recordSize)); err != nil {
		return fmt.Errorf("truncate index %s: %w", idx, err)
	}
	return nil
}

// recordsUpTo counts the index records whose bytes end at or before size.
func recordsUpTo(segPath string, size int64) (int, error) {
	recs, _, err := readIndex(indexPath(segPath))
	if err != nil {
		return 0, err
	}
	total := int64(0)
	for i, r := range recs {
		if total+int64(r.length) > size {
			return i, nil
		}
		total += int64(r.length)
	}
	return len(recs), nil
}

func createIndex(segPath string) (*os.File, error) {
	path := indexPath(segPath)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create index %s: %w", path, err)
	}
	if _, err := f.Write([]byte(indexMagic)); err != nil {
		f.Close()
		return nil, fmt.Errorf("write index %s: %w", path, err)
	}
	return f, nil
}
