package rdbmeta

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/hdt3213/rdb/lzf"
)

// decoder reads RDB strings, charging each against a byte budget.
type decoder struct {
	r      *bufio.Reader
	budget int64
}

// Length encodings: the top two bits of the first byte.
const (
	len6bit  = 0
	len14bit = 1
	len32or  = 2 // 0x80: 32-bit big endian follows, 0x81: 64-bit
	lenEnc   = 3 // a special string encoding, in the low six bits
)

// Special string encodings.
const (
	encInt8  = 0
	encInt16 = 1
	encInt32 = 2
	encLZF   = 3
)

// length returns a length, or, for the special encodings, the encoding with
// special set.
func (d *decoder) length() (n uint64, special bool, err error) {
	b, err := d.r.ReadByte()
	if err != nil {
		return 0, false, err
	}
	switch b >> 6 {
	case len6bit:
		return uint64(b & 0x3F), false, nil
	case len14bit:
		b2, err := d.r.ReadByte()
		if err != nil {
			return 0, false, err
		}
		return uint64(b&0x3F)<<8 | uint64(b2), false, nil
	case lenEnc:
		return uint64(b & 0x3F), true, nil
	}
	switch b {
	case 0x80:
		var buf [4]byte
		if _, err := io.ReadFull(d.r, buf[:]); err != nil {
			return 0, false, err
		}
		return uint64(binary.BigEndian.Uint32(buf[:])), false, nil
	case 0x81:
		var buf [8]byte
		if _, err := io.ReadFull(d.r, buf[:]); err != nil {
			return 0, false, err
		}
		return binary.BigEndian.Uint64(buf[:]), false, nil
	}
	return 0, false, fmt.Errorf("unknown length encoding %#x", b)
}

// str reads one string in any of its encodings; integers come back in
// decimal, as Redis renders them.
func (d *decoder) str() (string, error) {
	n, special, err := d.length()
	if err != nil {
		return "", err
	}
	if !special {
		b, err := d.bytes(n)
		return string(b), err
	}
	switch n {
	case encInt8:
		b, err := d.bytes(1)
		if err != nil {
			return "", err
		}
		return strconv.FormatInt(int64(int8(b[0])), 10), nil
	case encInt16:
		b, err := d.bytes(2)
		if err != nil {
			return "", err
		}
		return strconv.FormatInt(int64(int16(binary.LittleEndian.Uint16(b))), 10), nil
	case encInt32:
		b, err := d.bytes(4)
		if err != nil {
			return "", err
		}
		return strconv.FormatInt(int64(int32(binary.LittleEndian.Uint32(b))), 10), nil
	case encLZF:
		return d.lzfString()
	}
	return "", fmt.Errorf("unknown string encoding %d", n)
}

func (d *decoder) lzfString() (string, error) {
	clen, _, err := d.length()
	if err != nil {
		return "", err
	}
	ulen, _, err := d.length()
	if err != nil {
		return "", err
	}
	if ulen > uint64(d.budget) {
		return "", errBudget
	}
	in, err := d.bytes(clen)
	if err != nil {
		return "", err
	}
	d.budget -= int64(ulen)
	out, err := lzf.Decompress(in, len(in), int(ulen))
	if err != nil {
		return "", fmt.Errorf("lzf: %w", err)
	}
	return string(out), nil
}

var errBudget = errors.New("aux fields larger than the metadata budget")

func (d *decoder) bytes(n uint64) ([]byte, error) {
	if n > uint64(d.budget) {
		return nil, errBudget
	}
	d.budget -= int64(n)
	b := make([]byte, n)
	_, err := io.ReadFull(d.r, b)
	return b, err
}
