package rdbmeta_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hdt3213/rdb/lzf"

	"github.com/replproxy/replproxy/internal/rdbfixture"
	"github.com/replproxy/replproxy/internal/redisproc"
	"github.com/replproxy/replproxy/rdbmeta"
)

const replID = "0123456789abcdef0123456789abcdef01234567"

// Issue 11: headers and opcodes of releases newer than the pinned
// hdt3213/rdb are read as far as the metadata goes, CRC included.
func TestNewerHeadersAndOpcodes(t *testing.T) {
	cases := []struct {
		spec     rdbfixture.Spec
		producer string
	}{
		{rdbfixture.Spec{Header: "REDIS0012", RedisVer: "7.4.1", SlotInfo: true}, "Redis 7.4.1"},
		{rdbfixture.Spec{Header: "REDIS0013", RedisVer: "8.6.0", KeyMeta: true}, "Redis 8.6.0"},
		{rdbfixture.Spec{Header: "REDIS0014", RedisVer: "8.8.0", SlotInfo: true}, "Redis 8.8.0"},
		{rdbfixture.Spec{Header: "VALKEY080", RedisVer: "7.2.4", ValkeyVer: "9.0.0"}, "Valkey 9.0.0"},
		{rdbfixture.Spec{Header: "VALKEY081", RedisVer: "7.2.4", ValkeyVer: "9.2.0", KeyMeta: true}, "Valkey 9.2.0"},
		{rdbfixture.Spec{Header: "REDIS0099", RedisVer: "99.0.0", SlotInfo: true}, "Redis 99.0.0"},
	}
	for _, c := range cases {
		t.Run(c.spec.Header, func(t *testing.T) {
			c.spec.ReplID, c.spec.ReplOffset, c.spec.Key, c.spec.Value = replID, 123456, "k", "v"
			path := filepath.Join(t.TempDir(), "dump.rdb")
			if err := os.WriteFile(path, rdbfixture.Build(c.spec), 0o644); err != nil {
				t.Fatal(err)
			}
			info, err := rdbmeta.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if info.Header() != c.spec.Header || info.Producer() != c.producer || info.ReplID != replID ||
				info.ReplOffset != 123456 || info.ReplStreamDB != 0 || !info.CRCChecked {
				t.Fatalf("read %+v", info)
			}
			if info.Known != (c.spec.Header != "REDIS0099") {
				t.Fatalf("Known=%v for %s", info.Known, c.spec.Header)
			}
		})
	}
}

func TestChecksumMismatch(t *testing.T) {
	raw := rdbfixture.Build(rdbfixture.Spec{Header: "REDIS0013", RedisVer: "8.6.0", Key: "k", Value: "v"})
	raw[len(raw)-12] ^= 1 // inside the key's value
	path := filepath.Join(t.TempDir(), "dump.rdb")
	os.WriteFile(path, raw, 0o644)
	if _, err := rdbmeta.ReadFile(path); !errors.Is(err, rdbmeta.ErrChecksum) {
		t.Fatalf("want a checksum error, got %v", err)
	}
}

func TestNotAnRDB(t *testing.T) {
	if _, err := rdbmeta.Read(strings.NewReader("HELLO0012")); !errors.Is(err, rdbmeta.ErrNotRDB) {
		t.Fatalf("got %v", err)
	}
}

// Long aux strings may be LZF-compressed by the producer.
func TestLZFAux(t *testing.T) {
	long := strings.Repeat("abcabcabc", 20)
	comp, err := lzf.Compress([]byte(long))
	if err != nil || len(comp) == 0 {
		t.Fatalf("compress: %v", err)
	}
	var b bytes.Buffer
	b.WriteString("REDIS0011")
	b.WriteByte(0xFA)
	b.WriteByte(4)
	b.WriteString("note")
	b.WriteByte(0xC3)
	b.Write([]byte{0x40 | byte(len(comp)>>8), byte(len(comp))})
	b.Write([]byte{0x40 | byte(len(long)>>8), byte(len(long))})
	b.Write(comp)
	b.WriteByte(0xFF)
	info, err := rdbmeta.Read(&b)
	if err != nil {
		t.Fatal(err)
	}
	if info.Aux["note"] != long {
		t.Fatalf("aux note = %q", info.Aux["note"])
	}
}

// The reader agrees with a real server's RDB.
func TestRealRedisRDB(t *testing.T) {
	s := redisproc.Start(t)
	if err := s.Client().Set(t.Context(), "key", "value", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Do("SAVE"); err != nil {
		t.Fatal(err)
	}
	info, err := rdbmeta.ReadFile(filepath.Join(s.Dir, "dump.rdb"))
	if err != nil {
		t.Fatal(err)
	}
	want := s.Info("server")["redis_version"]
	if info.Magic != "REDIS" || !info.Known || info.RedisVer != want || !info.CRCChecked || info.Aux["redis-bits"] != "64" {
		t.Fatalf("read %+v, server is %s", info, want)
	}
}
