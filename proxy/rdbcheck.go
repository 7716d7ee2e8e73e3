package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/hdt3213/rdb/crc64jones"
	"github.com/hdt3213/rdb/model"
	"github.com/hdt3213/rdb/parser"
)

// RDBInfo is what the proxy reads from an RDB before trusting it.
type RDBInfo struct {
	Version      int
	RedisVer     string
	ReplID       string
	ReplOffset   int64 // -1 when absent
	ReplStreamDB int64 // -1 when absent
	CRCChecked   bool
}

// checkRDB validates a received RDB before it may replace a good snapshot:
// the header, the trailing CRC-64 over the whole file (skipped only when the
// producer wrote 0, as Redis allows), and the replication aux fields.
func checkRDB(path string, wantOffset int64) (RDBInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return RDBInfo{}, fmt.Errorf("open received RDB: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return RDBInfo{}, fmt.Errorf("stat received RDB: %w", err)
	}
	info, err := readAux(f, st.Size())
	if err != nil {
		return info, fmt.Errorf("received RDB %s: %w", path, err)
	}
	if info.ReplOffset >= 0 && info.ReplOffset != wantOffset {
		return info, fmt.Errorf("received RDB %s says repl-offset %d, the master announced %d", path, info.ReplOffset, wantOffset)
	}
	if info.Version >= 5 { // RDB 5 introduced the checksum
		ok, err := checkCRC(f, st.Size())
		if err != nil {
			return info, fmt.Errorf("received RDB %s: %w", path, err)
		}
		info.CRCChecked = ok
	}
	return info, nil
}

// readAux reads the header and aux fields with hdt3213/rdb. The decoder
// reads ahead, so it is given a reader bounded to the file, and it is
// stopped at the first key: the keys are Redis' business.
func readAux(f *os.File, size int64) (RDBInfo, error) {
	info := RDBInfo{ReplOffset: -1, ReplStreamDB: -1}
	var hdr [9]byte
	if _, err := f.ReadAt(hdr[:], 0); err != nil {
		return info, fmt.Errorf("too short for an RDB header: %w", err)
	}
	if !bytes.HasPrefix(hdr[:], []byte("REDIS")) {
		return info, fmt.Errorf("not an RDB (header %q)", hdr[:])
	}
	v, err := strconv.Atoi(string(hdr[5:]))
	if err != nil {
		return info, fmt.Errorf("bad RDB version in header %q", hdr[:])
	}
	info.Version = v
	dec := parser.NewDecoder(bufio.NewReader(io.NewSectionReader(f, 0, size))).WithSpecialOpCode()
	sawAux := false
	perr := dec.Parse(func(o model.RedisObject) bool {
		aux, ok := o.(*model.AuxObject)
		if !ok {
			return false
		}
		sawAux = true
		switch aux.Key {
		case "redis-ver":
			info.RedisVer = aux.Value
		case "repl-id":
			info.ReplID = aux.Value
		case "repl-offset":
			info.ReplOffset, _ = strconv.ParseInt(aux.Value, 10, 64)
		case "repl-stream-db":
			info.ReplStreamDB, _ = strconv.ParseInt(aux.Value, 10, 64)
		}
		return true
	})
	// The decoder stops with an error on opcodes it does not know (7.4
	// cluster slot info, Redis 8.6 key metadata); by then the aux fields,
	// which come first, are read, and Redis itself will judge the rest.
	if perr != nil && !sawAux {
		return info, fmt.Errorf("parse RDB: %w", perr)
	}
	return info, nil
}

// checkCRC verifies the trailing little-endian CRC-64/Jones. It reports
// false, without error, when the producer disabled the checksum (0).
func checkCRC(f *os.File, size int64) (bool, error) {
	if size < 9+8 {
		return false, errors.New("too short to hold a checksum")
	}
	var tail [8]byte
	if _, err := f.ReadAt(tail[:], size-8); err != nil {
		return false, fmt.Errorf("read checksum: %w", err)
	}
	want := binary.LittleEndian.Uint64(tail[:])
	if want == 0 {
		return false, nil
	}
	h := crc64jones.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, size-8)); err != nil {
		return false, fmt.Errorf("read for checksum: %w", err)
	}
	if got := h.Sum64(); got != want {
		return false, fmt.Errorf("checksum mismatch: computed %016x, stored %016x", got, want)
	}
	return true, nil
}
