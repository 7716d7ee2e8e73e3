// Package rdbmeta reads what the proxy wants to know about an RDB without
// understanding its keys: the header, the leading aux fields (producer,
// replication ID and offset) and the trailing CRC-64.
//
// It is deliberately tolerant. Redis and Valkey add RDB versions and
// opcodes every release or two (REDIS0013, REDIS0014, VALKEY081, opcode 244
// for slot info), and the proxy relays the bytes whatever they hold: the
// replicas judge the payload. So an unknown version or opcode ends the
// reading of metadata, never the sync.
package rdbmeta

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/hdt3213/rdb/crc64jones"
)

// Info is the metadata of one RDB.
type Info struct {
	Magic   string // "REDIS" or "VALKEY"
	Version int    // the number after the magic: 12 for REDIS0012, 80 for VALKEY080
	// Known says the version is one this reader was written against; the
	// others are read just as far as the format has stayed the same.
	Known        bool
	RedisVer     string // aux redis-ver (Valkey also writes one, for old tools)
	ValkeyVer    string // aux valkey-ver
	ReplID       string
	ReplOffset   int64 // -1 when absent
	ReplStreamDB int64 // -1 when absent
	Aux          map[string]string
	// StoppedAt names the first non-aux opcode, where reading stopped.
	StoppedAt  byte
	CRCChecked bool // the stored CRC-64 was non-zero and matched
}

// Header renders the 9-byte magic as it appears in the file.
func (i Info) Header() string {
	switch i.Magic {
	case "":
		return "(no RDB header)"
	case "VALKEY":
		return fmt.Sprintf("VALKEY%03d", i.Version)
	}
	return fmt.Sprintf("REDIS%04d", i.Version)
}

// Producer names the server that wrote the RDB, as well as the aux fields
// tell: "Valkey 8.0.1", "Redis 7.4.1", or "" when they are silent.
func (i Info) Producer() string {
	switch {
	case i.ValkeyVer != "":
		return "Valkey " + i.ValkeyVer
	case i.RedisVer != "":
		return "Redis " + i.RedisVer
	}
	return ""
}

// ProducerVersion is the version number of Producer.
func (i Info) ProducerVersion() string {
	if i.ValkeyVer != "" {
		return i.ValkeyVer
	}
	return i.RedisVer
}

// Opcodes that may precede the keys. Only AUX is read; the others end the
// metadata.
const (
	opAux = 0xFA
	opEOF = 0xFF
)

// knownVersion covers the formats this reader was checked against:
// REDIS0001..REDIS0014 and VALKEY080..VALKEY081.
func knownVersion(magic string, v int) bool {
	if magic == "VALKEY" {
		return v == 80 || v == 81
	}
	return v >= 1 && v <= 14
}

// ErrNotRDB marks input that does not start with an RDB header.
var ErrNotRDB = errors.New("not an RDB")

// maxAux bounds the aux block, so that a hostile or corrupt file cannot
// make the reader spend long or allocate much.
const (
	maxAuxFields = 1024
	maxAuxBytes  = 1 << 20
)

// Read parses the header and the leading aux fields from r. It reads no
// further than the first opcode that is not AUX.
func Read(r io.Reader) (Info, error) {
	info := Info{ReplOffset: -1, ReplStreamDB: -1, Aux: map[string]string{}}
	br := bufio.NewReaderSize(r, 4096)
	magic, v, err := readHeader(br)
	if err != nil {
		return info, err
	}
	info.Magic, info.Version, info.Known = magic, v, knownVersion(magic, v)
	d := &decoder{r: br, budget: maxAuxBytes}
	for n := 0; n < maxAuxFields; n++ {
		op, err := br.ReadByte()
		if err != nil {
			return info, fmt.Errorf("read opcode after %d aux fields: %w", n, err)
		}
		if op != opAux {
			info.StoppedAt = op
			return info, nil
		}
		k, err := d.str()
		if err != nil {
			return info, fmt.Errorf("read aux key: %w", err)
		}
		val, err := d.str()
		if err != nil {
			return info, fmt.Errorf("read aux %q: %w", k, err)
		}
		info.setAux(k, val)
	}
	return info, fmt.Errorf("more than %d aux fields", maxAuxFields)
}

func (i *Info) setAux(k, v string) {
	i.Aux[k] = v
	switch k {
	case "redis-ver":
		i.RedisVer = v
	case "valkey-ver":
		i.ValkeyVer = v
	case "repl-id":
		i.ReplID = v
	case "repl-offset":
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			i.ReplOffset = n
		}
	case "repl-stream-db":
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			i.ReplStreamDB = n
		}
	}
}

// readHeader accepts "REDIS" + 4 digits and "VALKEY" + 3 digits, any number.
func readHeader(br *bufio.Reader) (string, int, error) {
	var hdr [9]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return "", 0, fmt.Errorf("%w: too short for a header: %v", ErrNotRDB, err)
	}
	var magic, digits string
	switch {
	case string(hdr[:5]) == "REDIS":
		magic, digits = "REDIS", string(hdr[5:])
	case string(hdr[:6]) == "VALKEY":
		magic, digits = "VALKEY", string(hdr[6:])
	default:
		return "", 0, fmt.Errorf("%w: header %q", ErrNotRDB, hdr[:])
	}
	v, err := strconv.Atoi(digits)
	if err != nil || v < 0 {
		return "", 0, fmt.Errorf("%w: bad version in header %q", ErrNotRDB, hdr[:])
	}
	return magic, v, nil
}

// ReadFile reads the metadata of the RDB at path and verifies its CRC-64.
func ReadFile(path string) (Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return Info{}, fmt.Errorf("open RDB: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Info{}, fmt.Errorf("stat RDB: %w", err)
	}
	info, err := Read(io.NewSectionReader(f, 0, st.Size()))
	if err != nil {
		return info, err
	}
	ok, err := VerifyCRC(f, st.Size(), info)
	info.CRCChecked = ok
	return info, err
}

// ErrChecksum marks an RDB whose trailing CRC-64 does not match its bytes.
var ErrChecksum = errors.New("RDB checksum mismatch")

// AppendCRC appends to an RDB that ends with its EOF opcode the trailer
// VerifyCRC checks: the CRC-64/Jones of all before it, little-endian.
func AppendCRC(rdb []byte) []byte {
	h := crc64jones.New()
	h.Write(rdb)
	return binary.LittleEndian.AppendUint64(rdb, h.Sum64())
}

// VerifyCRC checks the trailing little-endian CRC-64/Jones over the rest
// of the file. It reports false, without error, where there is nothing to
// check: RDB versions before 5 have no checksum, and a producer with
// rdbchecksum off writes 0.
func VerifyCRC(r io.ReaderAt, size int64, info Info) (bool, error) {
	if info.Magic == "REDIS" && info.Version < 5 {
		return false, nil
	}
	if size < 9+1+8 {
		return false, fmt.Errorf("%w: %d bytes cannot hold an EOF opcode and a checksum", ErrChecksum, size)
	}
	var tail [9]byte
	if _, err := r.ReadAt(tail[:], size-9); err != nil {
		return false, fmt.Errorf("read checksum: %w", err)
	}
	want := binary.LittleEndian.Uint64(tail[1:])
	if want == 0 {
		return false, nil
	}
	h := crc64jones.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size-8)); err != nil {
		return false, fmt.Errorf("read for checksum: %w", err)
	}
	if got := h.Sum64(); got != want {
		return false, fmt.Errorf("%w: computed %016x, stored %016x", ErrChecksum, got, want)
	}
	if tail[0] != opEOF {
		return true, fmt.Errorf("checksum matches but the byte before it is %#x, not the EOF opcode", tail[0])
	}
	return true, nil
}
