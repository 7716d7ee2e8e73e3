package restore

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
)

const (
	rdbOpAux   = 0xFA
	rdbEncInt8 = 0
	rdbEncI16  = 1
	rdbEncI32  = 2
)

// streamDB reads the repl-stream-db aux field of an RDB: the database the
// master's stream had selected when the RDB was taken. A replica starts the
// stream after it in that database; a restore must too, since the stream
// selects again only when the database changes. ok is false when the RDB
// does not say (an RDB not made for replication).
func streamDB(r io.Reader) (db int, ok bool, err error) {
	br := bufio.NewReader(r)
	head := make([]byte, 9)
	if _, err := io.ReadFull(br, head); err != nil {
		return 0, false, fmt.Errorf("read RDB header: %w", err)
	}
	if string(head[:5]) != "REDIS" {
		return 0, false, fmt.Errorf("not an RDB file (header %q)", head)
	}
	for {
		op, err := br.ReadByte()
		if err != nil {
			return 0, false, fmt.Errorf("read RDB aux fields: %w", err)
		}
		if op != rdbOpAux {
			return 0, false, nil // aux fields come first; none said it
		}
		key, err := rdbString(br)
		if err != nil {
			return 0, false, err
		}
		val, err := rdbString(br)
		if err != nil {
			return 0, false, err
		}
		if key == "repl-stream-db" {
			n, err := strconv.Atoi(val)
			if err != nil {
				return 0, false, fmt.Errorf("RDB aux repl-stream-db %q: %w", val, err)
			}
			return n, true, nil
		}
	}
}

// rdbString reads an RDB string: raw, or an integer encoding. Aux fields
// are short, so the LZF encoding is not expected there.
func rdbString(br *bufio.Reader) (string, error) {
	n, enc, err := rdbLength(br)
	if err != nil {
		return "", err
	}
	if !enc {
		b := make([]byte, n)
		if _, err := io.ReadFull(br, b); err != nil {
			return "", fmt.Errorf("read RDB string: %w", err)
		}
		return string(b), nil
	}
	var size int
	switch n {
	case rdbEncInt8:
		size = 1
	case rdbEncI16:
		size = 2
	case rdbEncI32:
		size = 4
	default:
		return "", fmt.Errorf("RDB aux field with encoding %d", n)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(br, b[:size]); err != nil {
		return "", fmt.Errorf("read RDB integer: %w", err)
	}
	var v int64
	switch size {
	case 1:
		v = int64(int8(b[0]))
	case 2:
		v = int64(int16(binary.LittleEndian.Uint16(b)))
	case 4:
		v = int64(int32(binary.LittleEndian.Uint32(b)))
	}
	return strconv.FormatInt(v, 10), nil
}

// rdbLength reads an RDB length; enc says it is a special encoding's type.
func rdbLength(br *bufio.Reader) (n uint64, enc bool, err error) {
	b, err := br.ReadByte()
	if err != nil {
		return 0, false, fmt.Errorf("read RDB length: %w", err)
	}
	switch b >> 6 {
	case 0:
		return uint64(b & 0x3F), false, nil
	case 1:
		b2, err := br.ReadByte()
		if err != nil {
			return 0, false, fmt.Errorf("read RDB length: %w", err)
		}
		return uint64(b&0x3F)<<8 | uint64(b2), false, nil
	case 3:
		return uint64(b & 0x3F), true, nil
	}
	var buf [8]byte
	size := 4
	if b == 0x81 {
		size = 8
	} else if b != 0x80 {
		return 0, false, fmt.Errorf("bad RDB length byte %#x", b)
	}
	if _, err := io.ReadFull(br, buf[:size]); err != nil {
		return 0, false, fmt.Errorf("read RDB length: %w", err)
	}
	if size == 4 {
		return uint64(binary.BigEndian.Uint32(buf[:4])), false, nil
	}
	return binary.BigEndian.Uint64(buf[:]), false, nil
}
