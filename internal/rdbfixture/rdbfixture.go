// Package rdbfixture writes small RDB files with the headers and opcodes of
// releases the test machine cannot run (Redis 8.6 and 8.8, Valkey 9), so
// tests can check that the proxy relays what it does not understand.
package rdbfixture

import (
	"bytes"
	"encoding/binary"
	"strconv"

	"github.com/replproxy/replproxy/rdbmeta"
)

// Spec shapes one fixture.
type Spec struct {
	Header     string // "REDIS0013", "VALKEY081", ...
	RedisVer   string
	ValkeyVer  string // Valkey writes both
	ReplID     string
	ReplOffset int64
	// SlotInfo adds opcode 244 (Redis 7.4+ cluster mode) before the key.
	SlotInfo bool
	// KeyMeta adds opcode 243 (Redis 8.6 key metadata; Valkey 9 slot import).
	KeyMeta bool
	Key     string
	Value   string
}

// Build returns the RDB bytes, CRC-64 included.
func Build(s Spec) []byte {
	var b bytes.Buffer
	b.WriteString(s.Header)
	aux := func(k, v string) {
		b.WriteByte(0xFA)
		writeString(&b, k)
		writeString(&b, v)
	}
	if s.RedisVer != "" {
		aux("redis-ver", s.RedisVer)
	}
	if s.ValkeyVer != "" {
		aux("valkey-ver", s.ValkeyVer)
	}
	aux("redis-bits", "64")
	aux("ctime", "1764547200")
	if s.ReplID != "" {
		aux("repl-stream-db", "0")
		aux("repl-id", s.ReplID)
		aux("repl-offset", strconv.FormatInt(s.ReplOffset, 10))
	}
	b.Write([]byte{0xFE, 0x00})       // SELECTDB 0
	b.Write([]byte{0xFB, 0x01, 0x00}) // RESIZEDB 1 key, 0 expires
	if s.SlotInfo {
		b.Write([]byte{0xF4, 0x05, 0x01, 0x00}) // slot 5, 1 key, 0 expires
	}
	if s.KeyMeta {
		b.Write([]byte{0xF3, 0x01, 0x00}) // an opaque payload nobody here reads
	}
	if s.Key != "" {
		b.WriteByte(0x00) // a string value
		writeString(&b, s.Key)
		writeString(&b, s.Value)
	}
	b.WriteByte(0xFF)
	return rdbmeta.AppendCRC(b.Bytes())
}

// writeString writes a raw string; integers are encoded as Redis does, so
// readers meet both forms.
func writeString(b *bytes.Buffer, v string) {
	if n, err := strconv.ParseInt(v, 10, 32); err == nil && strconv.FormatInt(n, 10) == v {
		switch {
		case n >= -128 && n <= 127:
			b.Write([]byte{0xC0, byte(int8(n))})
		case n >= -32768 && n <= 32767:
			b.WriteByte(0xC1)
			binary.Write(b, binary.LittleEndian, int16(n))
		default:
			b.WriteByte(0xC2)
			binary.Write(b, binary.LittleEndian, int32(n))
		}
		return
	}
	switch n := len(v); {
	case n < 64:
		b.WriteByte(byte(n))
	case n < 16384:
		b.Write([]byte{0x40 | byte(n>>8), byte(n)})
	default:
		b.WriteByte(0x80)
		binary.Write(b, binary.BigEndian, uint32(n))
	}
	b.WriteString(v)
}
