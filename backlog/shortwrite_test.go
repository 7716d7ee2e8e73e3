package backlog

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"
)

// choppyWriter takes at most n bytes per write, as a socket with a full
// buffer does, and reports no error for the rest.
type choppyWriter struct {
	n   int
	out bytes.Buffer
}

func (w *choppyWriter) Write(p []byte) (int, error) {
	p = p[:min(len(p), w.n)]
	return w.out.Write(p)
}

// A byte flipped, mid-send, in records that straddle the send buffer,
// served through short writes and small bursts: every byte sent equals
// the appended stream, and the flip ends the send with ErrDamaged before
// any byte of its record that was not already checked goes out.
func TestShortWritesAcrossADamagedRecord(t *testing.T) {
	for _, burst := range []int64{4096, 100 << 10, 1 << 20} {
		dir := t.TempDir()
		logDir := filepath.Join(dir, "log")
		opt := logOptions(dir, nil, nil)
		opt.SegmentBytes = 8 << 20
		l, err := OpenLog(logDir, 1, opt)
		if err != nil {
			t.Fatal(err)
		}
		var stream []byte
		for i := 0; i < 8; i++ {
			rec := pattern(300<<10+i*1000, byte(i)) // two do not fit in one send buffer
			stream = append(stream, rec...)
			if err := l.Append(rec); err != nil {
				t.Fatal(err)
			}
		}
		l.SyncNow()
		c, err := l.NewCursor(1)
		if err != nil {
			t.Fatal(err)
		}
		w := &choppyWriter{n: 7777}
		flipAt := int64(len(stream) / 2)
		flipped := false
		var sendErr error
		for sendErr == nil {
			n, err := c.Send(w, burst)
			sendErr = err
			if !flipped && int64(w.out.Len()) > flipAt-(200<<10) {
				flipByte(t, segmentPath(logDir, 1), flipAt)
				flipped = true
			}
			if n == 0 && err == nil {
				break
			}
		}
		c.Close()
		l.Close()
		got := w.out.Bytes()
		if !bytes.Equal(got, stream[:len(got)]) {
			t.Fatalf("burst %d: the bytes sent differ from the stream", burst)
		}
		if !errors.Is(sendErr, ErrDamaged) {
			t.Fatalf("burst %d: sent %d of %d bytes, ended with %v; want ErrDamaged", burst, len(got), len(stream), sendErr)
		}
		if int64(len(got)) > flipAt {
			t.Fatalf("burst %d: sent %d bytes, past the flipped byte at %d", burst, len(got), flipAt)
		}
	}
}
