package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// sinkEnv makes this binary a sink: it accepts connections on a loopback
// port, prints the port, and discards all it reads. The sendfile floor's
// receivers live in their own process, as the replicas do, so the sender's
// CPU can be read apart from theirs.
const sinkEnv = "REPLPROXY_BENCH_SINK"

func runSinkIfAsked() {
	if os.Getenv(sinkEnv) == "" {
		return
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(0)
		}
		go io.Copy(io.Discard, c)
	}
}

// fanoutScale measures the proxy's CPU per GB per replica served with
// 1, 5, 20 and 50 replicas online, and the same bytes sent by plain
// sendfile from one file to as many sockets as the floor.
func (b *bench) fanoutScale(ctx context.Context) error {
	w := int64(b.opt.scaleMiB) << 20
	b.printf("\n== fanout-scale: proxy CPU per GB per replica online, %d MiB of %d-byte SETs each time;\n", b.opt.scaleMiB, b.opt.valueBytes)
	b.printf("   floor: the same bytes sent with sendfile from one file to as many loopback sockets (a sink process reads them)\n")
	b.printf("%9s %10s %12s %16s %18s %8s\n", "replicas", "stream MiB", "proxy CPU s", "proxy s/GB/repl", "sendfile s/GB/repl", "ratio")
	for _, n := range []int{1, 5, 20, 50} {
		r, err := b.fanoutCPUOne(ctx, fmt.Sprintf("scale%d", n), n, true, w)
		b.teardown()
		if err != nil {
			return fmt.Errorf("%d replicas: %w", n, err)
		}
		floor, err := sendfileFloor(ctx, b.env.root, r.stream, n)
		if err != nil {
			return fmt.Errorf("sendfile floor, %d sockets: %w", n, err)
		}
		per := r.proxy / gb(r.stream) / float64(n)
		fl := floor / gb(r.stream) / float64(n)
		b.printf("%9d %10.0f %12.2f %16.3f %18.3f %8.1f\n", n, mib(r.stream), r.proxy, per, fl, per/fl)
	}
	return nil
}

// sendfileFloor returns the CPU seconds this process spends sending size
// bytes of one file to each of n sockets with sendfile, n at once.
func sendfileFloor(ctx context.Context, root string, size int64, n int) (float64, error) {
	path := filepath.Join(root, "floor.bin")
	if err := writeRandomFile(path, size); err != nil {
		return 0, err
	}
	defer os.Remove(path)
	sink := exec.CommandContext(ctx, os.Args[0])
	sink.Env = append(os.Environ(), sinkEnv+"=1")
	sink.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := sink.StdoutPipe()
	if err != nil {
		return 0, err
	}
	if err := sink.Start(); err != nil {
		return 0, err
	}
	defer func() { sink.Process.Kill(); sink.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("sink port: %w", err)
	}
	addr := "127.0.0.1:" + strings.TrimSpace(line)
	conns := make([]net.Conn, n)
	for i := range conns {
		if conns[i], err = net.Dial("tcp", addr); err != nil {
			return 0, err
		}
		defer conns[i].Close()
	}
	before, _ := readCPU(os.Getpid())
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := os.Open(path)
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			if _, err := io.Copy(c, f); err != nil { // sendfile: *os.File to *net.TCPConn
				errs <- err
			}
		}()
	}
	wg.Wait()
	after, _ := readCPU(os.Getpid())
	select {
	case err := <-errs:
		return 0, err
	default:
	}
	return (after - before).Seconds(), nil
}

func writeRandomFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	for left := size; left > 0; left -= int64(len(buf)) {
		if _, err := f.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			return err
		}
	}

	return f.Sync()
}
