package main

import (
	"bufio"
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
	conn, err := net.DialTimeout("tcp", spec.addr, time.Second)
	if err != nil {
		return loadResult{}, err
	}
	defer conn.Close()
	stopWatch := context.AfterFunc(ctx, func() { conn.Close() })
	defer stopWatch()

	value := make([]byte, spec.valueBytes)
	rand.New(rand.NewSource(1)).Read(value)
	headers := make([][]byte, spec.keys)
	for i := range headers {
		key := "bench:" + strconv.Itoa(i)
		headers[i] = fmt.Appendf(nil, "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n", len(key), key, len(value))
	}

	// Each token is one command sent whose reply is still to be read.
	inflight := make(chan struct{}, max(4, pipelineBytes/spec.valueBytes))
	readDone := make(chan error, 1)
	go func() {
		br := bufio.NewReaderSize(conn, 64<<10)
		for range inflight {
			r, err := readReply(br)
			if err == nil && r != "OK" {
				err = fmt.Errorf("SET answered %v", r)
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
loop:
	for i := 0; ; i++ {
		if ctx.Err() != nil ||
			(spec.maxBytes > 0 && res.bytes >= spec.maxBytes) ||
			(spec.duration > 0 && time.Since(start) >= spec.duration) {
			break loop
		}
		select {
		case inflight <- struct{}{}:
		default:
			// The window is full: what is buffered must go out, or the
			// replies the reader waits for would never come.
			if werr = bw.Flush(); werr != nil {
				break loop
			}
			inflight <- struct{}{}
		}
		h := headers[i%len(headers)]
		bw.Write(h)
		bw.Write(value)
		if _, werr = bw.WriteString("\r\n"); werr != nil {
			break loop
		}
		res.bytes += int64(len(h) + len(value) + 2)
		res.cmds++
	}
	if werr == nil {
		werr = bw.Flush()
	}
	close(inflight)
	rerr := <-readDone
	res.elapsed = time.Since(start)
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if werr != nil {
		return res, fmt.Errorf("write load: %w", werr)
	}
	if rerr != nil {
		return res, fmt.Errorf("write load: %w", rerr)
	}
	return res, nil
}
