package rdbconvert

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strconv"

	"github.com/hdt3213/rdb/lzf"
)

// scanner reads an RDB's records without decoding their values, keeping
// the bytes of the current record in rec so that it can be copied as is.
type scanner struct {
	r   *bufio.Reader
	rec []byte
	// size is the source's size when known (0: unknown): a length within
	// it is allocated at once, rather than grown a chunk at a time, which
	// left several copies of the largest key for the GC.
	size int64
	// cuts are the consumers' active times (in rec) of a stream being
	// written as type 19, which has none.
	cuts      []int
	cutActive bool
}

// reset forgets the current record. A large key's buffer is not kept: as
// live memory it would double the GC's heap goal for the rest of the
// conversion (a 32 MiB key kept made the heap peak at 80 MiB on 1 GiB).
func (s *scanner) reset() {
	s.rec = s.rec[:0]
	if cap(s.rec) > 4<<20 {
		s.rec = nil
	}
}

func (s *scanner) byte() (byte, error) {
	b, err := s.r.ReadByte()
	if err != nil {
		return 0, unexpected(err)
	}
	s.rec = append(s.rec, b)
	return b, nil
}

// n reads k bytes into the record, a chunk at a time, so that a length
// the data does not have ends in an error rather than a huge allocation.
func (s *scanner) n(k uint64) error {
	if k > 1<<20 && k <= uint64(s.size) {
		s.rec = slices.Grow(s.rec, int(k))
	}
	for k > 0 {
		c := min(k, 1<<20)
		at := len(s.rec)
		s.rec = append(s.rec, make([]byte, c)...)
		if _, err := io.ReadFull(s.r, s.rec[at:]); err != nil {
			return unexpected(err)
		}
		k -= c
	}
	return nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// length reads an RDB length; special says it is a string encoding
// (integer or LZF) rather than a length.
func (s *scanner) length() (n uint64, special bool, err error) {
	b, err := s.byte()
	if err != nil {
		return 0, false, err
	}
	switch b >> 6 {
	case 0:
		return uint64(b & 0x3f), false, nil
	case 1:
		b2, err := s.byte()
		return uint64(b&0x3f)<<8 | uint64(b2), false, err
	case 3:
		return uint64(b & 0x3f), true, nil
	}
	switch b {
	case 0x80:
		if err := s.n(4); err != nil {
			return 0, false, err
		}
		return uint64(binary.BigEndian.Uint32(s.rec[len(s.rec)-4:])), false, nil
	case 0x81:
		if err := s.n(8); err != nil {
			return 0, false, err
		}
		return binary.BigEndian.Uint64(s.rec[len(s.rec)-8:]), false, nil
	}
	return 0, false, fmt.Errorf("unknown length encoding %#x", b)
}

func (s *scanner) lens(k int) error {
	for range k {
		if _, _, err := s.length(); err != nil {
			return err
		}
	}
	return nil
}

// str skips a string: plain, integer or LZF.
func (s *scanner) str() error {
	_, err := s.strBytes()
	return err
}

func (s *scanner) strs(k uint64) error {
	for range k {
		if err := s.str(); err != nil {
			return err
		}
	}
	return nil
}

// strBytes reads a string and returns where its stored bytes start in rec
// and its encoding, for strValue.
func (s *scanner) strBytes() (enc int, err error) {
	n, special, err := s.length()
	if err != nil {
		return 0, err
	}
	if !special {
		return -1, s.n(n)
	}
	switch n {
	case 0:
		return 0, s.n(1)
	case 1:
		return 1, s.n(2)
	case 2:
		return 2, s.n(4)
	case 3:
		clen, _, err := s.length()
		if err != nil {
			return 0, err
		}
		if _, _, err := s.length(); err != nil {
			return 0, err
		}
		return 3, s.n(clen)
	}
	return 0, fmt.Errorf("unknown string encoding %d", n)
}

// strValue reads a string and decodes it (for key names in messages).
func (s *scanner) strValue() (string, error) {
	at := len(s.rec)
	enc, err := s.strBytes()
	if err != nil {
		return "", err
	}
	raw := s.rec[at:]
	switch enc {
	case 0:
		return strconv.Itoa(int(int8(raw[1]))), nil
	case 1:
		return strconv.Itoa(int(int16(binary.LittleEndian.Uint16(raw[1:])))), nil
	case 2:
		return strconv.Itoa(int(int32(binary.LittleEndian.Uint32(raw[1:])))), nil
	case 3:
		sub := &scanner{r: bufio.NewReader(bytes.NewReader(raw[1:]))}
		clen, _, _ := sub.length()
		ulen, _, _ := sub.length()
		body := raw[1+len(sub.rec):]
		out, err := lzf.Decompress(body, int(clen), int(ulen))
		if err != nil {
			return "", fmt.Errorf("decompress a key name: %w", err)
		}
		return string(out), nil
	}
	n := len(raw)
	// A plain string: its length prefix is 1, 2, 5 or 9 bytes.
	sub := &scanner{r: bufio.NewReader(bytes.NewReader(raw))}
	sub.length()
	return string(raw[len(sub.rec):n]), nil
}

// value skips the value of a type the target loads as is (rdb.h).
func (s *scanner) value(typ byte) error {
	switch typ {
	case 0, 9, 10, 11, 12, 13, 16, 17, 20: // string, or one serialized blob
		return s.str()
	case 1, 2, 14: // list, set, quicklist: strings
		return s.each(s.str)
	case 3: // zset with string scores
		return s.each(func() error { return all(s.str, s.textScore) })
	case 4: // hash: field, value
		return s.each(func() error { return s.strs(2) })
	case 5: // zset with binary scores
		return s.each(func() error { return all(s.str, func() error { return s.n(8) }) })
	case 18: // quicklist 2: container, node
		return s.each(func() error { return all(func() error { return s.lens(1) }, s.str) })
	case 15, 19, 21:
		return s.stream(typ)
	}
	return fmt.Errorf("RDB type %d is unknown to the converter", typ)
}

// each reads a count, then calls item that many times.
func (s *scanner) each(item func() error) error {
	n, _, err := s.length()
	for ; err == nil && n > 0; n-- {
		err = item()
	}
	return err
}

// all runs the steps in order, up to the first that fails.
func all(steps ...func() error) error {
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// textScore skips a score of a type 3 zset: a length byte and that many
// bytes of text, or 253 to 255 alone (NaN, +inf, -inf).
func (s *scanner) textScore() error {
	l, err := s.byte()
	if err != nil || l >= 253 {
		return err
	}
	return s.n(uint64(l))
}

// stream skips a stream of RDB type 15, 19 or 21 (rdbSaveObject).
func (s *scanner) stream(typ byte) error {
	idLens := 3 // length, last ID
	if typ >= 19 {
		idLens += 5 // first ID, max deleted ID, entries added
	}
	return all(
		func() error { return s.each(func() error { return s.strs(2) }) }, // master ID, listpack
		func() error { return s.lens(idLens) },
		func() error { return s.each(func() error { return s.streamGroup(typ) }) })
}

// streamGroup skips a consumer group: name, last ID, pending entries (ID,
// delivery time, delivery count) and consumers.
func (s *scanner) streamGroup(typ byte) error {
	k := 2 // last ID
	if typ >= 19 {
		k++ // entries read
	}
	pending := func() error { return all(func() error { return s.n(16 + 8) }, func() error { return s.lens(1) }) }
	return all(s.str,
		func() error { return s.lens(k) },
		func() error { return s.each(pending) },
		func() error { return s.each(func() error { return s.streamConsumer(typ) }) })
}

// streamConsumer skips a consumer: name, seen time, active time (type 21)
// and the IDs of its pending entries.
func (s *scanner) streamConsumer(typ byte) error {
	if err := s.str(); err != nil {
		return err
	}
	times := uint64(8) // seen time
	if typ >= 21 {
		times += 8 // active time
		if s.cutActive {
			s.cuts = append(s.cuts, len(s.rec)+8)
		}
	}
	if err := s.n(times); err != nil {
		return err
	}
	cpel, _, err := s.length()
	if err != nil {
		return err
	}
	return s.n(16 * cpel)
}

// moduleValue skips a module value of type 7: the module ID, then typed
// opcodes up to EOF (rdbLoadCheckModuleValue).
func (s *scanner) moduleValue() error {
	if err := s.lens(1); err != nil {
		return err
	}
	for {
		op, _, err := s.length()
		if err != nil {
			return err
		}
		switch op {
		case 0: // EOF
			return nil
		case 1, 2: // signed, unsigned integer
			err = s.lens(1)
		case 3: // float
			err = s.n(4)
		case 4: // double
			err = s.n(8)
		case 5: // string
			err = s.str()
		default:
			return fmt.Errorf("unknown module value opcode %d", op)
		}
		if err != nil {
			return err
		}
	}
}

// streamAs19 reads a stream of type 21 and leaves it in rec as type 19,
// the RDB 10 stream: the consumers' active times are left out (Redis 7.0
// has none; 7.2 sets a loaded type 19 consumer's active time to its seen
// time). typeAt is the type byte's index in rec.
func (s *scanner) streamAs19(typeAt int) error {
	s.cutActive, s.cuts = true, s.cuts[:0]
	defer func() { s.cutActive = false }()
	if err := s.stream(21); err != nil {
		return err
	}
	for i := len(s.cuts) - 1; i >= 0; i-- {
		at := s.cuts[i]
		s.rec = append(s.rec[:at], s.rec[at+8:]...)
	}
	s.rec[typeAt] = 19
	return nil
}
