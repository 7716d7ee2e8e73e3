package rdbconvert

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hdt3213/rdb/crc64jones"
)

// writeLargeRDB writes an RDB 12 of n string keys of valueBytes each, and
// one key of largest bytes, to w, as a stream: the test never holds it.
func writeLargeRDB(w io.Writer, n, valueBytes, largest int) error {
	crc := crc64jones.New()
	out := io.MultiWriter(w, crc)
	if _, err := io.WriteString(out, "REDIS0012"); err != nil {
		return err
	}
	value := make([]byte, valueBytes)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	rec := []byte{opSelectDB, 0}
	for i := 0; i <= n; i++ {
		v := value
		if i == n/2 {
			v = make([]byte, largest)
		}
		rec = append(rec, 0) // string
		rec = appendStr(rec, fmt.Appendf(nil, "key:%d", i))
		rec = appendStr(rec, v)
		if _, err := out.Write(rec); err != nil {
			return err
		}
		rec = rec[:0]
	}
	if _, err := out.Write([]byte{opEOF}); err != nil {
		return err
	}
	var sum [8]byte
	binary.LittleEndian.PutUint64(sum[:], crc.Sum64())
	_, err := w.Write(sum[:])
	return err
}

// The conversion holds one key at a time: converting 64 MiB whose
// largest key is 4 MiB keeps the heap near its buffers and that key,
// whatever the snapshot's size (bench/scenario -scenario convert measures
// RSS for 1 GiB through a real Redis 7.4 RDB).
func TestConvertMemoryIsFlat(t *testing.T) {
	const n, valueBytes, largest = 64 << 10, 1 << 10, 4 << 20
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeLargeRDB(pw, n, valueBytes, largest)) }()
	defer pr.Close()

	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	target, _ := ParseFormat("redis-7.2")
	var written countingWriter
	st, err := Convert(context.Background(), pr, &written, target, false)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if st.Keys != n+1 {
		t.Fatalf("%d keys converted, want %d", st.Keys, n+1)
	}
	grew := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("converted %d keys, %.0f MiB written; heap in use grew by at most %.1f MiB (largest key %d MiB)",
		st.Keys, float64(written)/(1<<20), float64(grew)/(1<<20), largest>>20)
	// The reader's and writer's 1 MiB buffers, the record buffer grown
	// for the largest key, and garbage up to the next GC.
	if limit := int64(32<<20 + 2*largest); grew > limit {
		t.Fatalf("heap in use grew by %d MiB converting %d MiB, limit %d MiB", grew>>20, int64(n*valueBytes)>>20, limit>>20)
	}
}

type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}
