package upstream

import (
	"bytes"
	"testing"
)

// The GETACK scanner must see the command wherever the reads split it,
// and only where it is.
func TestGetackSeenAcrossReads(t *testing.T) {
	cmd := []byte(getackText)
	stream := append(append([]byte("*1\r\n$4\r\nPING\r\n"), cmd...), "*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n"...)
	for cut := 0; cut <= len(stream); cut++ {
		for cut2 := cut; cut2 <= len(stream); cut2 += 7 {
			var g getackScanner
			hits := 0
			for _, p := range [][]byte{stream[:cut], stream[cut:cut2], stream[cut2:]} {
				if g.seen(p) {
					hits++
				}
			}
			if hits != 1 {
				t.Fatalf("split at %d and %d: seen %d times, want once", cut, cut2, hits)
			}
		}
	}
	var g getackScanner
	hits := 0
	for i := range stream {
		if g.seen(stream[i : i+1]) {
			hits++
		}
	}
	if hits != 1 {
		t.Fatalf("one byte per read: seen %d times, want once", hits)
	}
	g = getackScanner{}
	if g.seen(bytes.Repeat([]byte("REPLCONF GETACK "), 100)) {
		t.Fatal("seen in bytes that are not the command")
	}
}
