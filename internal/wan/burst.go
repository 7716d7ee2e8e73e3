package wan

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"time"

	"github.com/replproxy/replproxy/internal/mixedload"
)

// Burst writes SETs of JSON-like values (mixedload.NewJSON) to the server
// at network/addr at bytesPerSec of commands for d, pipelined, and says
// how many bytes it wrote. Replies are read as they come, so the server's
// pace, not the client's buffer, bounds what is in flight. The commands
// are made before the clock starts, up to cycleBytes, and sent over again
// in turn: on a busy machine making them cost more CPU than Redis spent
// on them.
func Burst(ctx context.Context, network, addr string, bytesPerSec int64, d time.Duration) (int64, error) {
	return PrepareBurst(bytesPerSec, d).Send(ctx, network, addr)
}

// Prepared is a burst whose commands are made, ready to send.
type Prepared struct {
	cmds        [][]byte
	bytesPerSec int64
	d           time.Duration
}

// PrepareBurst makes the commands of a Burst, so that its clock can start
// when it is sent.
func PrepareBurst(bytesPerSec int64, d time.Duration) *Prepared {
	return &Prepared{cmds: commands(min(bytesPerSec*int64(d/time.Second+1), cycleBytes)), bytesPerSec: bytesPerSec, d: d}
}

// Send writes the burst to the server at network/addr.
func (p *Prepared) Send(ctx context.Context, network, addr string) (int64, error) {
	cmds, bytesPerSec, d := p.cmds, p.bytesPerSec, p.d
	conn, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		return 0, fmt.Errorf("burst: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	inflight := make(chan struct{}, 4096)
	readErr := make(chan error, 1)
	go func() {
		br := bufio.NewReaderSize(conn, 64<<10)
		for range inflight {
			line, err := br.ReadSlice('\n')
			if err == nil && len(line) > 0 && line[0] == '-' {
				err = fmt.Errorf("server: %s", line)
			}
			if err != nil {
				readErr <- err
				conn.Close()
				for range inflight {
				}
				return
			}
		}
		readErr <- nil
	}()

	bw := bufio.NewWriterSize(conn, 64<<10)
	start := time.Now()
	var sent int64
	var werr error
	i := 0
	for werr == nil && ctx.Err() == nil {
		el := time.Since(start)
		if el >= d {
			break
		}
		// Keep to the rate in 10 ms steps.
		if due := int64(el.Seconds() * float64(bytesPerSec)); sent >= due {
			if werr = bw.Flush(); werr != nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		select {
		case inflight <- struct{}{}:
		default:
			if werr = bw.Flush(); werr == nil {
				inflight <- struct{}{}
			}
		}
		if werr != nil {
			break
		}
		cmd := cmds[i%len(cmds)]
		i++
		_, werr = bw.Write(cmd)
		sent += int64(len(cmd))
	}
	if werr == nil {
		werr = bw.Flush()
	}
	close(inflight)
	rerr := <-readErr
	switch {
	case ctx.Err() != nil:
		return sent, ctx.Err()
	case werr != nil:
		return sent, fmt.Errorf("burst: %w", werr)
	case rerr != nil:
		return sent, fmt.Errorf("burst: %w", rerr)
	}
	return sent, nil
}

// cycleBytes bounds the commands Burst makes up front: far more than the
// 1 MiB zstd window, so repeating them flatters no codec.
const cycleBytes = 64 << 20

func commands(n int64) [][]byte {
	gen := mixedload.NewJSON(time.Now().Unix())
	var out [][]byte
	for total := int64(0); total < n; {
		cmd, _ := gen.Append(nil)
		out = append(out, cmd)
		total += int64(len(cmd))
	}
	return out
}
