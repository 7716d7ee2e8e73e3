package resp_test

import (
	"bytes"
	"fmt"

	"github.com/replproxy/replproxy/resp"
)

// A relay must answer a master's REPLCONF GETACK once it holds everything
// up to that command. The Scanner finds the command however the stream is
// split, and even when a value merely contains the same bytes.
func ExampleScanner() {
	var stream []byte
	stream = resp.AppendCommand(stream, "SET", "k", "*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n$1\r\n*\r\n")
	stream = resp.AppendCommand(stream, "REPLCONF", "GETACK", "*")
	stream = resp.AppendCommand(stream, "PING")

	isGetack := func(head [][]byte) bool {
		return len(head) >= 2 &&
			bytes.EqualFold(head[0], []byte("REPLCONF")) &&
			bytes.EqualFold(head[1], []byte("GETACK"))
	}
	var s resp.Scanner
	for len(stream) > 0 {
		chunk := stream[:min(7, len(stream))]
		stream = stream[len(chunk):]
		err := s.Feed(chunk, func(end int64, head [][]byte) {
			if isGetack(head) {
				fmt.Println("GETACK ends at offset", end)
			}
		})
		if err != nil {
			fmt.Println(err)
			return
		}
	}
	fmt.Println("fed", s.Fed(), "at boundary:", s.Boundary())
	// Output:
	// GETACK ends at offset 101
	// fed 115 at boundary: true
}
