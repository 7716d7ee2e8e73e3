package rdbconvert

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync/atomic"

	"github.com/hdt3213/rdb/core"
	"github.com/hdt3213/rdb/crc64jones"
	"github.com/hdt3213/rdb/model"
)

// Stats counts what a conversion wrote and, when lossy, what it left out.
type Stats struct {
	Keys      int64 // keys written
	Reencoded int64 // keys written in an older type; the rest are copied as they were
	// LostFieldTTLs counts hash fields written without their TTL (Redis
	// 7.4 HEXPIRE); LostKeys counts keys left out (module types, streams
	// newer than the target).
	LostFieldTTLs int64
	LostKeys      int64
}

// Progress is what a running conversion has done so far, for reports
// read while it runs.
type Progress struct {
	Bytes atomic.Int64 // source bytes read (the reader runs up to 1 MiB ahead)
	Keys  atomic.Int64 // keys written
}

type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// Lost reports whether anything was left out.
func (s Stats) Lost() bool { return s.LostFieldTTLs+s.LostKeys > 0 }

// UnsupportedError names the first key (or feature) the target cannot
// hold, when the conversion may not lose it.
type UnsupportedError struct {
	DB     int
	Key    string
	What   string
	Target string
}

func (e *UnsupportedError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("the snapshot holds %s, which %s cannot load", e.What, e.Target)
	}
	return fmt.Sprintf("key %q (db %d) holds %s, which the converter cannot write for %s", e.Key, e.DB, e.What, e.Target)
}

// ErrUnsupported is wrapped by every UnsupportedError.
var ErrUnsupported = errors.New("the target cannot hold the snapshot's data")

func (e *UnsupportedError) Unwrap() error { return ErrUnsupported }

// RDB opcodes and types (rdb.h) the converter looks at.
const (
	opModuleAux  = 0xF7
	opIdle       = 0xF8
	opFreq       = 0xF9
	opAux        = 0xFA
	opResizeDB   = 0xFB
	opExpireMs   = 0xFC
	opExpireSec  = 0xFD
	opSelectDB   = 0xFE
	opEOF        = 0xFF
	opFunction2  = 0xF5
	opSlotInfo   = 0xF4
	typeList     = 1
	typeSet      = 2
	typeHash     = 4
	typeZSet2    = 5
	typeStream3  = 21
	typeModule   = 6
	typeModule2  = 7
	functionsMin = 10 // RDB version of the first Redis with functions (7.0)
)

// Convert writes the RDB read from src to dst in target's format. Every
// record whose type the target loads is copied byte for byte (with its
// expire, LRU and LFU); a key of a newer type is decoded with
// hdt3213/rdb's parser and written in the older type that holds the same
// data. One key at a time is held in memory. Data the target cannot hold
// (hash field TTLs, module types, a stream newer than the target) ends
// the conversion with an *UnsupportedError naming the first such key;
// with lossy it is left out and counted instead.
func Convert(ctx context.Context, src io.Reader, dst io.Writer, target Format, lossy bool) (Stats, error) {
	return ConvertProgress(ctx, src, dst, target, lossy, nil)
}

// ConvertProgress is Convert that keeps p up to date as it goes (p may
// be nil).
func ConvertProgress(ctx context.Context, src io.Reader, dst io.Writer, target Format, lossy bool, p *Progress) (Stats, error) {
	if p == nil {
		p = &Progress{}
	}
	var size int64
	if lr, ok := src.(*io.LimitedReader); ok {
		size = lr.N
	}
	src = countingReader{r: src, n: &p.Bytes}
	if why := target.Convertible(); why != "" {
		return Stats{}, fmt.Errorf("convert for %s: %s: %w", target.Name, why, ErrUnsupported)
	}
	crc := crc64jones.New()
	bw := bufio.NewWriterSize(io.MultiWriter(dst, crc), 1<<20)
	c := &converter{ctx: ctx, out: bw, target: target, lossy: lossy, maxType: maxType[target.Written()], progress: p,
		in: &scanner{r: bufio.NewReaderSize(src, 1<<20), size: size}}
	if err := c.header(); err != nil {
		return c.stats, err
	}
	fmt.Fprintf(bw, "REDIS%04d", target.Written())
	if err := c.body(); err != nil {
		if c.last != "" && !errors.Is(err, ErrUnsupported) {
			return c.stats, fmt.Errorf("after key %q: %w", c.last, err)
		}
		return c.stats, err
	}
	bw.WriteByte(opEOF)
	if err := bw.Flush(); err != nil {
		return c.stats, fmt.Errorf("write converted snapshot: %w", err)
	}
	var sum [8]byte
	binary.LittleEndian.PutUint64(sum[:], crc.Sum64())
	if _, err := dst.Write(sum[:]); err != nil {
		return c.stats, fmt.Errorf("write converted snapshot: %w", err)
	}
	return c.stats, nil
}

type converter struct {
	ctx      context.Context
	in       *scanner
	out      *bufio.Writer
	target   Format
	lossy    bool
	maxType  byte
	stats    Stats
	progress *Progress
	magic    []byte // the source's header, for the decoder
	db       int
	last     string // the last key read, for errors
}

func (c *converter) header() error {
	if err := c.in.n(9); err != nil {
		return fmt.Errorf("read RDB header: %w", err)
	}
	c.magic = bytes.Clone(c.in.rec)
	if !bytes.HasPrefix(c.magic, []byte("REDIS")) && !bytes.HasPrefix(c.magic, []byte("VALKEY")) {
		return fmt.Errorf("not an RDB: header %q", c.magic)
	}
	c.in.reset()
	return nil
}

// body copies record after record until EOF; expire, LRU and LFU opcodes
// stay in the record of the key they precede.
func (c *converter) body() error {
	for {
		if c.stats.Keys%1024 == 0 {
			if err := context.Cause(c.ctx); err != nil {
				return err
			}
		}
		op, err := c.in.byte()
		if err != nil {
			return fmt.Errorf("read snapshot: %w", err)
		}
		prefix := true // an opcode that belongs to the next key
		switch op {
		case opEOF:
			// The store checks the source's CRC-64; a trailer that is
			// not all there is a snapshot cut short.
			if err := c.in.n(8); err != nil {
				return fmt.Errorf("read the RDB's checksum: %w", err)
			}
			return nil
		case opExpireMs:
			err = c.in.n(8)
		case opExpireSec:
			err = c.in.n(4)
		case opIdle:
			_, _, err = c.in.length()
		case opFreq:
			err = c.in.n(1)
		default:
			prefix = false
			err = c.record(op)
		}
		if err != nil {
			return err
		}
		if !prefix {
			c.out.Write(c.in.rec)
			c.in.reset()
			c.progress.Keys.Store(c.stats.Keys)
		}
	}
}

// record reads the record that op starts, leaving in the scanner what is
// to be written.
func (c *converter) record(op byte) error {
	var err error
	switch op {
	case opAux:
		err = c.in.strs(2)
	case opSelectDB:
		var db uint64
		db, _, err = c.in.length()
		c.db = int(db)
	case opResizeDB:
		err = c.in.lens(2)
	case opFunction2:
		if c.target.Written() < functionsMin {
			return c.unsupported("", "function libraries", nil)
		}
		err = c.in.str()
	case opSlotInfo:
		// Valkey 9's per-slot sizes: hints an older target does not know.
		err = c.in.lens(3)
		c.in.reset()
	default:
		if op >= 0xF0 {
			return c.unsupported("", fmt.Sprintf("RDB opcode %#x (module auxiliary data or newer metadata)", op), nil)
		}
		return c.key(op)
	}
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	return nil
}

// key reads a key's record; the scanner holds its opcodes and type.
func (c *converter) key(typ byte) error {
	typeAt := len(c.in.rec) - 1
	downStream := typ == typeStream3 && c.maxType < typeStream3
	if typ > c.maxType && !downStream {
		return c.newerKey(typ)
	}
	key, err := c.in.strValue()
	if err != nil {
		return fmt.Errorf("read a key after %q: %w", c.last, err)
	}
	c.last = key
	if typ == typeModule || typ == typeModule2 {
		if err := c.unsupported(key, "a module type", &c.stats.LostKeys); err != nil {
			return err
		}
		if typ == typeModule {
			return fmt.Errorf("key %q (db %d): a value of the pre-release module type 6 cannot be skipped", key, c.db)
		}
		err = c.in.moduleValue()
		c.in.reset()
	} else if downStream {
		err = c.in.streamAs19(typeAt)
		c.stats.Keys++
		c.stats.Reencoded++
	} else {
		err = c.in.value(typ)
		c.stats.Keys++
	}
	if err != nil {
		return fmt.Errorf("read key %q (db %d) of RDB type %d: %w", key, c.db, typ, err)
	}
	return nil
}

// newerKey decodes a key of a type the target does not know and writes
// it in an older type.
func (c *converter) newerKey(typ byte) error {
	o, err := c.decodeOne(typ)
	if err != nil {
		return fmt.Errorf("after key %q: %w", c.last, err)
	}
	c.last = o.GetKey()
	meta := c.in.rec[:len(c.in.rec)-1] // the opcodes before the type
	body, err := c.reencode(o, typ)
	if err != nil {
		return err
	}
	if body == nil {
		c.in.reset() // left out, counted
		return nil
	}
	c.in.rec = append(meta, body...)
	c.stats.Keys++
	c.stats.Reencoded++
	return nil
}

// decodeOne has hdt3213/rdb's parser read the key and value of a record
// whose type byte was read: it gets the source's header and that byte,
// then the stream one byte per read, and no byte past the value.
func (c *converter) decodeOne(typ byte) (model.RedisObject, error) {
	one := &oneKey{r: c.in.r}
	pre := append(bytes.Clone(c.magic), typ)
	var obj model.RedisObject
	err := core.NewDecoder(io.MultiReader(bytes.NewReader(pre), one)).Parse(func(o model.RedisObject) bool {
		obj, one.done = o, true
		return false
	})
	if obj == nil {
		return nil, fmt.Errorf("decode a value of RDB type %d: %v", typ, err)
	}
	return obj, nil
}

// oneKey feeds the decoder one byte per read until it has its object, so
// that its buffer never reads into the next record.
type oneKey struct {
	r    *bufio.Reader
	done bool
}

func (o *oneKey) Read(p []byte) (int, error) {
	if o.done {
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	b, err := o.r.ReadByte()
	if err != nil {
		return 0, err
	}
	p[0] = b
	return 1, nil
}

// reencode returns o's type, key and value in the older type that holds
// the same data, or nil if it is left out (lossy).
func (c *converter) reencode(o model.RedisObject, typ byte) ([]byte, error) {
	var body []byte
	switch v := o.(type) {
	case *model.HashObject:
		if n := fieldTTLs(v); n > 0 {
			if err := c.unsupported(o.GetKey(), fmt.Sprintf("%d hash field(s) with a TTL (HEXPIRE)", n), nil); err != nil {
				return nil, err
			}
			c.stats.LostFieldTTLs += n
		}
		body = appendLen([]byte{typeHash}, o.GetKey(), uint64(len(v.Hash)))
		for f, val := range v.Hash {
			body = appendStr(appendStr(body, []byte(f)), val)
		}
	case *model.SetObject:
		body = appendLen([]byte{typeSet}, o.GetKey(), uint64(len(v.Members)))
		for _, m := range v.Members {
			body = appendStr(body, m)
		}
	case *model.ListObject:
		body = appendLen([]byte{typeList}, o.GetKey(), uint64(len(v.Values)))
		for _, m := range v.Values {
			body = appendStr(body, m)
		}
	case *model.ZSetObject:
		body = appendLen([]byte{typeZSet2}, o.GetKey(), uint64(len(v.Entries)))
		for _, e := range v.Entries {
			body = binary.LittleEndian.AppendUint64(appendStr(body, []byte(e.Member)), math.Float64bits(e.Score))
		}
	default:
		what := fmt.Sprintf("a %s of RDB type %d, newer than RDB %d", o.GetType(), typ, c.target.Written())
		return nil, c.unsupported(o.GetKey(), what, &c.stats.LostKeys)
	}
	return body, nil
}

// unsupported refuses, or with lossy counts the loss in lost (if not nil)
// and lets the caller go on.
func (c *converter) unsupported(key, what string, lost *int64) error {
	if !c.lossy {
		return &UnsupportedError{DB: c.db, Key: key, What: what, Target: c.target.Name}
	}
	if lost != nil {
		*lost++
	}
	return nil
}

// appendLen appends the key and an RDB length.
func appendLen(b []byte, key string, n uint64) []byte {
	return appendLength(appendStr(b, []byte(key)), n)
}

func appendLength(b []byte, n uint64) []byte {
	switch {
	case n < 1<<6:
		return append(b, byte(n))
	case n < 1<<14:
		return append(b, 0x40|byte(n>>8), byte(n))
	case n <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0x80), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(b, 0x81), n)
}

func appendStr(b, s []byte) []byte { return append(appendLength(b, uint64(len(s))), s...) }

// hfeInvalid is Redis' EB_EXPIRE_TIME_INVALID: a field with no TTL.
const hfeInvalid = core.EB_EXPIRE_TIME_INVALID

func fieldTTLs(h *model.HashObject) int64 {
	var n int64
	for _, at := range h.FieldExpirations {
		if at > 0 && at < hfeInvalid {
			n++
		}
	}
	return n
}
