package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/replproxy/replproxy/restore"
)

func restoreCommand() *cli.Command {
	return &cli.Command{
		Name:  "restore",
		Usage: "rebuild the dataset at a past point from the kept snapshots and the backlog, as an RDB (read-only, safe beside a running proxy)",
		Description: "Give exactly one target. A temporary redis-server, on a private unix socket, becomes a\n" +
			"replica of restore, which serves it the newest intact kept snapshot before the target and the\n" +
			"backlog after it up to the target, rounded down to a command boundary outside any MULTI/EXEC.\n" +
			"As a replica expires nothing, the result is the master's dataset at the target, TTLs included\n" +
			"(keys whose TTL has passed since are in it too); it is saved to --out.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Required: true, Usage: "the proxy's data dir"},
			&cli.StringFlag{Name: "out", Required: true, Usage: "the RDB file to write"},
			&cli.StringFlag{Name: "to-time", Usage: "the state at this moment, RFC3339 (to the second)"},
			&cli.Int64Flag{Name: "to-offset", Usage: "the state after this replication offset"},
			&cli.StringFlag{Name: "before", Usage: "the state just before the last command matching this pattern, e.g. 'FLUSHALL' or 'DEL user:*'"},
			&cli.StringFlag{Name: "redis-server", Usage: "redis-server binary for the replay (default: the one in PATH)"},
			&cli.StringFlag{Name: "tmp-dir", Usage: "where the temporary server's files go (default: the system's temp dir)"},
			&cli.DurationFlag{Name: "progress-interval", Value: 5 * time.Second, Usage: "how often a long replay reports its progress (0: never)"},
		},
		Action: func(c *cli.Context) error {
			target, err := restoreTarget(c)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := restore.Run(ctx, restore.Options{
				DataDir: c.String("data-dir"), Out: c.String("out"), Target: target,
				RedisServer: c.String("redis-server"), TmpDir: c.String("tmp-dir"),
				Progress: c.App.ErrWriter, ProgressEvery: c.Duration("progress-interval"),
			})
			if err != nil {
				return fmt.Errorf("restore: %w", err)
			}
			printRestore(c.App.Writer, c.String("out"), res)
			return nil
		},
	}
}

func restoreTarget(c *cli.Context) (restore.Target, error) {
	var t restore.Target
	n := 0
	if s := c.String("to-time"); s != "" {
		at, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return t, fmt.Errorf("--to-time %q: want RFC3339, e.g. 2026-12-01T23:05:00Z: %w", s, err)
		}
		t.Time, n = at, n+1
	}
	if c.IsSet("to-offset") {
		if t.Offset = c.Int64("to-offset"); t.Offset < 1 {
			return t, fmt.Errorf("--to-offset %d: must be positive", t.Offset)
		}
		n++
	}
	if t.Before = c.String("before"); t.Before != "" {
		n++
	}
	if n != 1 {
		return t, errors.New("give exactly one of --to-time, --to-offset and --before")
	}
	return t, nil
}

func printRestore(w io.Writer, out string, r restore.Result) {
	fmt.Fprintf(w, "snapshot   %s at offset %d\n", r.Snapshot.File, r.Snapshot.Offset)
	if r.Reached == r.Snapshot.Offset {
		fmt.Fprintf(w, "replayed   nothing: the target is the snapshot's offset\n")
	} else {
		fmt.Fprintf(w, "replayed   offsets %d..%d (%d bytes, %d commands)\n", r.From, r.Reached, r.Bytes, r.Commands)
	}
	if !r.FromTime.IsZero() && !r.ReachedTime.IsZero() {
		fmt.Fprintf(w, "times      %s .. %s (of the time index, to the second)\n", r.FromTime.UTC().Format(time.RFC3339), r.ReachedTime.UTC().Format(time.RFC3339))
	}
	if r.Rounded() {
		fmt.Fprintf(w, "target     offset %d, rounded down to %d (a command boundary outside MULTI/EXEC)\n", r.Requested, r.Reached)
	} else {
		fmt.Fprintf(w, "target     offset %d, reached exactly\n", r.Requested)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note       %s\n", n)
	}
	fmt.Fprintf(w, "digest     %s\n", r.Digest)
	fmt.Fprintf(w, "wrote      %s in %s\n", out, r.Duration.Round(time.Millisecond))
}

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:  "export",
		Usage: "write a range of the stream as an AOF-style RESP file, for audit or redis-cli --pipe (read-only)",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Required: true, Usage: "the proxy's data dir"},
			&cli.Int64Flag{Name: "from", Required: true, Usage: "first offset (rounded up to a command boundary)"},
			&cli.Int64Flag{Name: "to", Required: true, Usage: "last offset (rounded down to a command boundary outside MULTI/EXEC)"},
			&cli.StringFlag{Name: "out", Value: "-", Usage: "file to write (-: standard output)"},
		},
		Action: func(c *cli.Context) error {
			var res restore.ExportResult
			var err error
			if out := c.String("out"); out != "-" {
				res, err = restore.ExportFile(c.String("data-dir"), c.Int64("from"), c.Int64("to"), out)
			} else {
				res, err = restore.Export(c.String("data-dir"), c.Int64("from"), c.Int64("to"), c.App.Writer)
			}
			if err != nil {
				return fmt.Errorf("export: %w", err)
			}
			fmt.Fprintf(c.App.ErrWriter, "exported offsets %d..%d: %d commands, starting in db %s\n",
				res.From, res.To, res.Commands, strconv.Itoa(res.DB))
			return nil
		},
	}
}
