package fanout

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/rdbconvert"
	"github.com/replproxy/replproxy/resp"
)

// testWatch is a watch for a redis-7.2 replica of a Redis 7.4 master, its
// log in buf.
func testWatch(t *testing.T, buf *bytes.Buffer, from int64) *cmdWatch {
	t.Helper()
	f, err := rdbconvert.ParseFormat("redis-7.2")
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{srv: &Server{}, log: zerolog.New(buf), userFormat: f}
	target, _ := formatServer(f)
	master, _ := parseServer(false, "7.4.1")
	w := &cmdWatch{r: r, sc: newCommandScanner(from, 0), unknown: unknownTo(target, master, true),
		counts: map[string]int64{}, seen: map[string]bool{}}
	w.sc.onCommand = w.command
	return w
}

// Review of issue 26: a flood of unknown commands gives one line per name
// at its first occurrence and no summary within the minute that follows;
// every one is counted; a transaction is named once; bytes fed one at a
// time count the same as whole writes.
func TestUnknownCommandFloodLogsFewLines(t *testing.T) {
	var buf bytes.Buffer
	w := testWatch(t, &buf, 0)
	hp := resp.AppendCommand(nil, "HPEXPIREAT", "h", "99999999999999", "FIELDS", "1", "f")
	per := resp.AppendCommand(nil, "hpersist", "h", "FIELDS", "1", "f")
	set := resp.AppendCommand(nil, "SET", "k", string(hp)) // a value that reads like a command
	var stream []byte
	for i := 0; i < 5000; i++ {
		stream = append(stream, hp...)
		stream = append(stream, set...)
		stream = append(stream, per...)
	}
	tx := resp.AppendCommand(nil, "MULTI")
	tx = resp.AppendCommand(tx, "SET", "a", "b")
	tx = append(tx, hp...)
	tx = resp.AppendCommand(tx, "EXEC")
	w.wrap(&bytes.Buffer{}).Write(stream[:len(stream)/2])
	for _, c := range stream[len(stream)/2:] {
		w.observe([]byte{c})
	}
	w.observe(tx)
	w.observe(tx)
	if w.sc == nil {
		t.Fatal("the watch stopped on a well-formed stream")
	}
	if got := w.r.unknownCmds.Load(); got != 10002 {
		t.Fatalf("counted %d, want 10002", got)
	}
	lines := strings.Count(buf.String(), "\n")
	if lines != 3 {
		t.Fatalf("%d log lines for 10002 unknown commands, want 3 (HPEXPIREAT, HPERSIST, HPEXPIREAT in a transaction):\n%s", lines, buf.String())
	}
	if strings.Count(buf.String(), `"in_transaction":true`) != 1 {
		t.Fatalf("the transaction is not named once:\n%s", buf.String())
	}
	// A minute on, the next one brings one summary of all since, those
	// logged one by one left out.
	w.lastLog = w.lastLog.Add(-unknownLogEvery)
	buf.Reset()
	w.observe(per)
	w.observe(per)
	if got := buf.String(); strings.Count(got, "\n") != 1 || !strings.Contains(got, `"HPEXPIREAT":5000`) ||
		!strings.Contains(got, `"HPERSIST":5000`) {
		t.Fatalf("summary a minute on: %s", got)
	}
}

// Review of issue 26: the scanner keeps no more of a huge argument than a
// command name's worth, and a stream it cannot follow (a resume inside a
// command, junk) ends the watch without touching what is written.
func TestWatchHugeArgumentAndJunk(t *testing.T) {
	var buf bytes.Buffer
	w := testWatch(t, &buf, 0)
	const size = 600 << 20 // past Redis' default 512 MB proto-max-bulk-len
	head := []byte("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$" + strconv.Itoa(size) + "\r\n")
	w.observe(head)
	chunk := bytes.Repeat([]byte("*1\r\n$8\r\nHPERSIST\r\n"), 1<<16) // 1.1 MB of command-like bytes
	left := size
	for left > 0 {
		n := min(left, len(chunk))
		w.observe(chunk[:n])
		left -= n
		if cap(w.sc.value) > 64 || cap(w.sc.line) > 64 {
			t.Fatalf("scanner holds %d+%d bytes inside a huge argument", cap(w.sc.value), cap(w.sc.line))
		}
	}
	w.observe([]byte("\r\n"))
	if w.r.unknownCmds.Load() != 0 || w.sc == nil || w.sc.boundary != w.sc.off {
		t.Fatalf("after a huge SET: counted %d, watch %v", w.r.unknownCmds.Load(), w.sc != nil)
	}

	// Resumed inside a command: the scanner gives up, the bytes still go out.
	for _, junk := range []string{"$1\r\nk\r\n", "PING\r\n", "\n", "*-1\r\n", "*99999999999999999999\r\n",
		strings.Repeat("x", 100)} {
		buf.Reset()
		w := testWatch(t, &buf, 0)
		var out bytes.Buffer
		ww := w.wrap(&out)
		ww.Write([]byte(junk))
		ww.Write(resp.AppendCommand(nil, "HPERSIST", "h", "FIELDS", "1", "f"))
		if out.Len() == 0 || w.sc != nil {
			t.Fatalf("%q: %d bytes out, watch still on: %v", junk, out.Len(), w.sc != nil)
		}
		if !strings.Contains(buf.String(), "stopped counting") {
			t.Fatalf("%q: no log line: %s", junk, buf.String())
		}
	}
}
