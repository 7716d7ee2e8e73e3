package rdbconvert

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

// savedRDB runs a load of every type against the system Redis 7.0 and
// returns its RDB.
func savedRDB(t *testing.T) []byte {
	t.Helper()
	m := redisproc.Start(t)
	load := redisproc.StartLoad(context.Background(), m, redisproc.LoadOptions{DBs: 2, Seed: 26, Rate: 2000})
	redisproc.Eventually(t, 30*time.Second, "the load to write", func() (bool, string) {
		n := m.InfoInt("stats", "total_commands_processed")
		return n > 4000, "commands"
	})
	if _, err := load.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Do("SAVE"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(m.Dir, "dump.rdb"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Converting an RDB for the format it is already in copies every record:
// the scanner finds each record's end exactly, or the bytes would differ.
func TestConvertSameFormatIsByteExact(t *testing.T) {
	src := savedRDB(t)
	if string(src[:9]) != "REDIS0010" {
		t.Skipf("the system Redis writes %q, not RDB 10", src[:9])
	}
	target, _ := ParseFormat("redis-7.0")
	var out bytes.Buffer
	st, err := Convert(context.Background(), bytes.NewReader(src), &out, target, false)
	if err != nil {
		t.Fatal(err)
	}
	if st.Keys == 0 || st.Reencoded != 0 || st.Lost() {
		t.Fatalf("stats %+v: want keys copied, none re-encoded or lost", st)
	}
	if !bytes.Equal(out.Bytes(), src) {
		t.Fatalf("%d bytes in, %d out, not equal", len(src), out.Len())
	}
	t.Logf("%d keys, %d bytes copied byte for byte", st.Keys, len(src))
}

// A truncated or damaged RDB ends the conversion with an error, never a
// panic or a huge allocation.
func TestConvertDamagedInput(t *testing.T) {
	src := savedRDB(t)
	target, _ := ParseFormat("redis-7.2")
	cuts := []int{len(src) - 8, len(src) - 1} // the checksum trailer cut short
	for cut := 0; cut < len(src); cut += max(len(src)/97, 1) {
		cuts = append(cuts, cut)
	}
	for _, cut := range cuts {
		_, err := Convert(context.Background(), bytes.NewReader(src[:cut]), &bytes.Buffer{}, target, false)
		if err == nil {
			t.Fatalf("a snapshot cut at %d of %d bytes converted without error", cut, len(src))
		}
	}
	bad := bytes.Clone(src)
	for i := 40; i < len(bad); i += 131 {
		bad[i] = 0x81 // a 64-bit length marker wherever it lands
	}
	_, err := Convert(context.Background(), bytes.NewReader(bad), &bytes.Buffer{}, target, false)
	if err == nil {
		t.Fatal("a damaged snapshot converted without error")
	}
	t.Logf("damaged: %v", err)
}

func TestConvertRefusesOldTargets(t *testing.T) {
	target, _ := ParseFormat("redis-6.2")
	_, err := Convert(context.Background(), bytes.NewReader(nil), &bytes.Buffer{}, target, true)
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("redis-6.2: %v, want ErrUnsupported", err)
	}
	if _, err := ParseFormat("redis-9.9"); err == nil {
		t.Fatal("an unknown format was accepted")
	}
}
