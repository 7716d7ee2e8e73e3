package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"net"
	"strconv"
	"time"
)

// loadSpec is a write load of big SETs on a small keyspace: the replication
// stream grows by gigabytes while every Redis holds only keys*valueBytes.
type loadSpec struct {
	addr       string
	valueBytes int
	keys       int
	maxBytes   int64         // stop once this many command bytes are sent (0: no limit)
	duration   time.Duration // stop after this long (0: no limit)
}

type loadResult struct {
	bytes   int64 // command bytes sent, which is what the master propagates
	cmds    int64
	elapsed time.Duration // until the last reply
}

// pipelineBytes is how much may be in flight unanswered: enough to keep
// the master busy between replies, little enough not to buffer seconds.
const pipelineBytes = 4 << 20

// runLoad pipelines SETs on one connection until a limit is reached. One
// connection suffices: the master is single-threaded, and on two cores a
// second writer would only take CPU from the processes being measured.
func runLoad(ctx context.Context, spec loadSpec) (loadResult, error) {
	value := make([]byte, spec.valueBytes)
	rand.New(rand.NewSource(1)).Read(value)
	headers := make([][]byte, spec.keys)
	for i := range headers {
		key := "bench:" + strconv.Itoa(i)
		headers[i] = fmt.Appendf(nil, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n", len(key), key, len(value))
	}
	cmd := make([][]byte, 3)
	window := max(4, pipelineBytes/spec.valueBytes)
	res, err := pipeline(ctx, spec.addr, window, func(sent loadResult) [][]byte {
		if (spec.maxBytes > 0 && sent.bytes >= spec.maxBytes) || (spec.duration > 0 && sent.elapsed >= spec.duration) {
			return nil
		}
		cmd[0], cmd[1], cmd[2] = headers[sent.cmds%int64(len(headers))], value, crlf
		return cmd
	})
	if err != nil && ctx.Err() == nil {
		err = fmt.Errorf("write load: %w", err)
	}
	return res, err
}

var crlf = []byte("\r\n")

// pipeline sends the commands next returns, each as its parts, on one
// connection to addr, with at most window of them unanswered, until next
// returns nil or ctx ends. next sees what was sent so far, to know when to
// stop. Every reply the loads provoke is one line (+OK, :n); an error
// reply ends the load.
func pipeline(ctx context.Context, addr string, window int, next func(sent loadResult) [][]byte) (loadResult, error) {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return loadResult{}, err
	}
	defer conn.Close()
	stopWatch := context.AfterFunc(ctx, func() { conn.Close() })
	defer stopWatch()

	// Each token is one command sent whose reply is still to be read.
	inflight := make(chan struct{}, window)
	readDone := make(chan error, 1)
	go func() {
		br := bufio.NewReaderSize(conn, 64<<10)
		for range inflight {
			line, err := br.ReadSlice('\n')
			if err == nil && len(line) > 0 && line[0] == '-' {
				err = fmt.Errorf("server: %s", bytes.TrimSpace(line))
			}
			if err != nil {
				readDone <- err
				conn.Close() // so the writer's next flush fails and it stops
				for range inflight {
				}
				return
			}
		}
		readDone <- nil
	}()

	start := time.Now()
	var res loadResult
	bw := bufio.NewWriterSize(conn, 1<<20)
	var werr error
	for ctx.Err() == nil && werr == nil {
		res.elapsed = time.Since(start)
		cmd := next(res)
		if cmd == nil {
			break
		}
		select {
		case inflight <- struct{}{}:
		default:
			// The window is full: what is buffered must go out, or the
			// replies the reader waits for would never come.
			if werr = bw.Flush(); werr != nil {
				break
			}
			inflight <- struct{}{}
		}
		for _, part := range cmd {
			if werr == nil {
				_, werr = bw.Write(part)
				res.bytes += int64(len(part))
			}
		}
		res.cmds++
	}
	if werr == nil {
		werr = bw.Flush()
	}
	close(inflight)
	rerr := <-readDone
	res.elapsed = time.Since(start)
	switch {
	case ctx.Err() != nil:
		return res, ctx.Err()
	case werr != nil:
		return res, werr
	}
	return res, rerr
}
