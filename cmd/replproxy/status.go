package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/replproxy/replproxy/resp"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "one-screen summary of a running proxy, read from its INFO",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "addr", Value: "127.0.0.1:6380", Usage: "the proxy's address (host:port)"},
			&cli.StringFlag{Name: "password", Usage: "the proxy's requirepass", EnvVars: []string{"REPLPROXY_REQUIREPASS"}},
			&cli.BoolFlag{Name: "watch", Usage: "redraw every second until interrupted"},
		},
		Action: func(c *cli.Context) error {
			addr, pass := c.String("addr"), c.String("password")
			if !c.Bool("watch") {
				info, err := fetchInfo(addr, pass)
				if err != nil {
					return err
				}
				renderStatus(c.App.Writer, addr, info, time.Now())
				return nil
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return watchStatus(ctx, c.App.Writer, addr, pass)
		},
	}
}

// watchStatus redraws the summary every second; a proxy that does not
// answer is shown as such, and the watch goes on.
func watchStatus(ctx context.Context, w io.Writer, addr, pass string) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		fmt.Fprint(w, "\x1b[H\x1b[2J")
		if info, err := fetchInfo(addr, pass); err != nil {
			fmt.Fprintf(w, "%s: %v\n", addr, err)
		} else {
			renderStatus(w, addr, info, time.Now())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// fetchInfo reads INFO all over one plain connection.
func fetchInfo(addr, pass string) (map[string]string, error) {
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	if pass != "" {
		if _, err := command(conn, br, "AUTH", pass); err != nil {
			return nil, err
		}
	}
	text, err := command(conn, br, "INFO", "all")
	if err != nil {
		return nil, err
	}
	info := map[string]string{}
	for _, line := range strings.Split(text, "\r\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && !strings.HasPrefix(line, "#") {
			info[k] = v
		}
	}
	return info, nil
}

// command sends one command and reads a simple, error or bulk reply.
func command(conn net.Conn, br *bufio.Reader, args ...string) (string, error) {
	if _, err := conn.Write(resp.AppendCommand(nil, args...)); err != nil {
		return "", fmt.Errorf("send %s: %w", args[0], err)
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read %s reply: %w", args[0], err)
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "-"):
		return "", fmt.Errorf("%s: %s", args[0], line[1:])
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 || n > 64<<20 {
			return "", fmt.Errorf("%s: bad reply %q", args[0], line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", fmt.Errorf("read %s reply: %w", args[0], err)
		}
		return string(buf[:n]), nil
	}
	return line, nil
}

// fields splits "a=1,b=2" as INFO's replica and work lines are written.
func fields(s string) map[string]string {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			out[k] = v
		}
	}
	return out
}

func num(s string) int64 {
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// numbered returns the values of prefix0, prefix1... in order.
func numbered(info map[string]string, prefix string) []map[string]string {
	var keys []int
	for k := range info {
		if i, err := strconv.Atoi(strings.TrimPrefix(k, prefix)); err == nil && strings.HasPrefix(k, prefix) {
			keys = append(keys, i)
		}
	}
	sort.Ints(keys)
	out := make([]map[string]string, len(keys))
	for i, k := range keys {
		out[i] = fields(info[prefix+strconv.Itoa(k)])
	}
	return out
}

func renderStatus(w io.Writer, addr string, info map[string]string, now time.Time) {
	ready := "NOT READY"
	if info["ready"] == "1" {
		ready = "ready"
	}
	fmt.Fprintf(w, "replproxy %s at %s, up %s, %s: %s\n", info["replproxy_version"], addr,
		time.Duration(num(info["uptime_in_seconds"]))*time.Second, ready, info["ready_reason"])
	works := map[string]map[string]string{}
	for _, wk := range numbered(info, "work") {
		works[wk["kind"]+" "+wk["peer"]] = wk
	}
	renderUpstream(w, info, works)
	renderStore(w, info, now)
	reps := numbered(info, "replica")
	fmt.Fprintf(w, "replicas   %d\n", len(reps))
	for _, r := range reps {
		line := fmt.Sprintf("  %-21s %-11s lag %s, %ss", r["addr"], r["state"], human(num(r["lag_bytes"])), r["lag_seconds"])
		for _, kind := range []string{"replica_full_sync", "replica_catchup"} {
			if wk, ok := works[kind+" "+r["addr"]]; ok {
				line += "  " + progressText(strings.ReplaceAll(strings.TrimPrefix(kind, "replica_"), "_", " "), wk)
			}
		}
		fmt.Fprintln(w, line)
	}
}

func renderUpstream(w io.Writer, info map[string]string, works map[string]map[string]string) {
	master := net.JoinHostPort(info["master_host"], info["master_port"])
	link := "link " + info["master_link_status"]
	if s := info["master_link_down_since_seconds"]; s != "" {
		link += " for " + s + "s"
	}
	fmt.Fprintf(w, "upstream   %s, %s, %s, offset %s", master, link, lastByteText(info["master_last_io_seconds_ago"]), info["master_repl_offset"])
	if info["last_ack_sent_offset"] != "" {
		fmt.Fprintf(w, ", last ACK %s (%ss ago)", info["last_ack_sent_offset"], info["last_ack_sent_seconds_ago"])
	}
	fmt.Fprintf(w, "\n           syncs: %s full, %s partial; %s received\n", info["upstream_full_syncs"], info["upstream_partial_syncs"],
		human(num(info["upstream_bytes_received"])))
	for _, kind := range []string{"upstream_full_sync", "snapshot_refresh"} {
		if wk, ok := works[kind+" "+master]; ok {
			fmt.Fprintf(w, "           %s\n", progressText(strings.ReplaceAll(kind, "_", " "), wk))
		}
	}
}

// lastByteText reads master_last_io_seconds_ago, which is -1 (as in
// Redis) when no byte ever came from the master.
func lastByteText(ago string) string {
	if ago == "" || strings.HasPrefix(ago, "-") {
		return "no byte from the master yet"
	}
	return "last byte " + ago + "s ago"
}

func renderStore(w io.Writer, info map[string]string, now time.Time) {
	fmt.Fprintf(w, "backlog    offsets [%s, %s), %s of %s", info["backlog_first_offset"], info["backlog_end_offset"],
		human(num(info["backlog_bytes"])), human(num(info["backlog_max_bytes"])))
	if t := info["backlog_first_byte_time"]; t != "" {
		first := time.Unix(num(t), 0)
		fmt.Fprintf(w, ", oldest byte %s (%s ago)", first.UTC().Format(time.RFC3339), now.Sub(first).Round(time.Second))
	}
	fmt.Fprintf(w, "\n           fsync %s: last %sus, max %sus, %s slow\n", info["fsync_policy"], info["fsync_last_usec"],
		info["fsync_max_usec"], info["fsync_slow_count"])
	renderDisk(w, info)
	if info["snapshot_offset"] == "" {
		fmt.Fprintln(w, "snapshot   none yet")
		return
	}
	fmt.Fprintf(w, "snapshot   offset %s, %s, %ss old; %s refreshes, %s failed\n", info["snapshot_offset"],
		human(num(info["snapshot_bytes"])), info["snapshot_age_seconds"], info["snapshot_refreshes"], info["snapshot_refresh_failures"])
}

func progressText(what string, wk map[string]string) string {
	total := num(wk["total"])
	s := fmt.Sprintf("%s: %s", what, human(num(wk["done"])))
	if total >= 0 {
		s += fmt.Sprintf(" of %s (%s%%)", human(total), wk["percent"])
	}
	s += fmt.Sprintf(" at %s/s", human(num(wk["rate_bytes"])))
	if eta := wk["eta_seconds"]; eta != "-1" {
		s += ", ETA " + eta + "s"
	}
	return s
}

// renderDisk shows the data dir's free space, damaged/ against its bound,
// and a link that waits for space.
func renderDisk(w io.Writer, info map[string]string) {
	if info["damaged_bytes"] == "" {
		return // an older proxy
	}
	fmt.Fprintf(w, "data dir   %s free; damaged/ %s of %s\n", human(num(info["data_dir_free_bytes"])),
		human(num(info["damaged_bytes"])), human(num(info["damaged_max_bytes"])))
	if info["upstream_waiting_for_space"] == "1" {
		fmt.Fprintf(w, "           upstream waits for space for %ss: %s\n", info["upstream_waiting_for_space_seconds"], info["upstream_waiting_for_space_reason"])
	}
}
