package restore

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/replproxy/replproxy/resp"
)

func cmd(args ...string) string { return string(resp.AppendCommand(nil, args...)) }

// The stream splits into units at command boundaries, a MULTI/EXEC block
// is one unit, and a stream cut inside a command or a block has no unit
// there.
func TestParserUnits(t *testing.T) {
	stream := cmd("SELECT", "1") + cmd("SET", "a", "1") + cmd("MULTI") + cmd("INCR", "a") + cmd("DEL", "b") + cmd("EXEC") + cmd("PING")
	p := newParser(strings.NewReader(stream), 101)
	var got []string
	for {
		u, err := p.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, describe(u))
		if u.start < 101 || u.end > 101+int64(len(stream)) || stream[u.start-101:u.end-101] != string(joinRaw(u)) {
			t.Fatalf("unit %s at [%d, %d) does not hold its bytes", describe(u), u.start, u.end)
		}
	}
	if strings.Join(got, ",") != "SELECT,SET,a MULTI/EXEC block of 2 commands,PING" {
		t.Fatalf("units %v", got)
	}
	for _, cut := range []int{len(stream) - len(cmd("PING")) - len(cmd("EXEC")), len(cmd("SELECT", "1")) + 3} {
		p := newParser(strings.NewReader(stream[:cut]), 1)
		var err error
		for err == nil {
			_, err = p.next()
		}
		if !errors.Is(err, errIncomplete) {
			t.Fatalf("stream cut at %d: %v, want errIncomplete", cut, err)
		}
	}
}

func joinRaw(u unit) []byte {
	var b []byte
	for _, c := range u.cmds {
		b = append(b, c.raw...)
	}
	return b
}

func TestPattern(t *testing.T) {
	for _, tc := range []struct {
		pat  string
		args []string
		want bool
	}{
		{"FLUSHALL", []string{"flushall"}, true},
		{"FLUSHALL", []string{"FLUSHALL", "ASYNC"}, true},
		{"flushdb", []string{"FLUSHALL"}, false},
		{"DEL user:*", []string{"DEL", "user:42", "x"}, true},
		{"DEL user:*", []string{"DEL", "session:1"}, false},
		{"FLUSH*", []string{"FLUSHDB"}, true},
		{"SET k?y [ab]*", []string{"SET", "key", "b1"}, true},
		{"SET k?y [^ab]*", []string{"SET", "key", "b1"}, false},
	} {
		p, err := parsePattern(tc.pat)
		if err != nil {
			t.Fatal(err)
		}
		c := command{}
		for _, a := range tc.args {
			c.args = append(c.args, []byte(a))
		}
		if got := p.matches(c); got != tc.want {
			t.Errorf("%q matches %v = %v, want %v", tc.pat, tc.args, got, tc.want)
		}
	}
}

// The database a restore starts in comes from the RDB's repl-stream-db,
// raw or integer-encoded, after other aux fields.
func TestStreamDB(t *testing.T) {
	aux := func(k string, v []byte) []byte { return append(append([]byte{0xFA, byte(len(k))}, k...), v...) }
	rdb := []byte("REDIS0010")
	rdb = append(rdb, aux("redis-ver", append([]byte{6}, "7.0.15"...))...)
	rdb = append(rdb, aux("repl-stream-db", []byte{0xC0, 0x02})...)
	rdb = append(rdb, 0xFE, 0x00)
	if db, ok, err := streamDB(strings.NewReader(string(rdb))); err != nil || !ok || db != 2 {
		t.Fatalf("streamDB = %d %v %v, want 2", db, ok, err)
	}
	plain := []byte("REDIS0010")
	plain = append(plain, aux("redis-ver", append([]byte{6}, "7.0.15"...))...)
	plain = append(plain, 0xFE, 0x00)
	if _, ok, err := streamDB(strings.NewReader(string(plain))); err != nil || ok {
		t.Fatalf("streamDB of an RDB without repl-stream-db: ok %v, err %v", ok, err)
	}
}
