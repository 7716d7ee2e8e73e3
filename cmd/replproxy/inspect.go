package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/replproxy/replproxy/proxy"
)

func inspectCommand() *cli.Command {
	return &cli.Command{
		Name:      "inspect",
		Usage:     "describe a data dir offline (the snapshot's keys and memory, the backlog's offsets and times), or one RDB file",
		ArgsUsage: "[RDB file]",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Usage: "the proxy's data dir"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON, for scripts"},
			&cli.IntFlag{Name: "top", Value: 10, Usage: "how many of the biggest keys to list"},
		},
		Action: func(c *cli.Context) error {
			dir := c.String("data-dir")
			switch {
			case dir != "" && c.NArg() > 0:
				return errors.New("give an RDB file or --data-dir, not both")
			case c.NArg() == 1:
				return inspectRDB(c.App.Writer, c.Args().First())
			case dir == "":
				return errors.New("give an RDB file or --data-dir")
			}
			rep, err := proxy.Inspect(dir, c.Int("top"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(c.App.Writer)
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			printInspect(c.App.Writer, rep)
			return nil
		},
	}
}

func printInspect(w io.Writer, rep proxy.InspectReport) {
	now := rep.Generated
	fmt.Fprintf(w, "data dir   %s\n", rep.DataDir)
	fmt.Fprintf(w, "replid     %s (replid2 %s up to %d)\n", rep.ReplID, rep.ReplID2, rep.SecondOffset)
	if s := rep.Snapshot; s != nil {
		fmt.Fprintf(w, "snapshot   %s at offset %d, %s, written %s (%s ago)\n",
			s.File, s.Offset, human(s.Bytes), s.WrittenAt.UTC().Format(time.RFC3339), ago(now, s.WrittenAt))
		fmt.Fprintf(w, "  RDB %s (version %d), produced by %s\n", s.RDBHeader, s.RDBVersion, producer(s.Aux))
		fmt.Fprintf(w, "  %d keys (%d with a TTL), memory estimate %s\n", s.Keys, s.Expiring, human(s.MemoryBytes))
		for _, db := range s.DBs {
			fmt.Fprintf(w, "  db%d: %d keys (%s), %s\n", db.DB, db.Keys, typeCounts(db.Types), human(db.MemoryBytes))
		}
		if len(s.Biggest) > 0 {
			fmt.Fprintln(w, "  biggest keys:")
		}
		for _, k := range s.Biggest {
			elems := ""
			if k.Type != "string" {
				elems = fmt.Sprintf(" (%d elements)", k.Elements)
			}
			fmt.Fprintf(w, "    db%d %-6s %-10s %q%s\n", k.DB, k.Type, human(int64(k.MemoryBytes)), k.Key, elems)
		}
		if s.Incomplete != "" {
			fmt.Fprintf(w, "  (scan stopped early: %s)\n", s.Incomplete)
		}
	}
	b := rep.Backlog
	fmt.Fprintf(w, "backlog    epoch %d, %d segments, offsets [%d, %d), %s\n", b.Epoch, b.Segments, b.FirstOffset, b.EndOffset, human(b.Bytes))
	if b.FirstByteTime != nil && b.LastByteTime != nil {
		fmt.Fprintf(w, "  first byte %s, last byte %s (spans %s; last byte %s ago)\n",
			b.FirstByteTime.UTC().Format(time.RFC3339), b.LastByteTime.UTC().Format(time.RFC3339),
			b.LastByteTime.Sub(*b.FirstByteTime).Round(time.Second), ago(now, *b.LastByteTime))
	}
	for _, p := range rep.Problems {
		fmt.Fprintln(w, "PROBLEM:", p)
	}
}

func producer(aux map[string]string) string {
	name, ver := "redis", aux["redis-ver"]
	if v, ok := aux["valkey-ver"]; ok {
		name, ver = "valkey", v
	}
	if ver == "" {
		return "unknown (no version aux field)"
	}
	out := name + " " + ver
	if bits := aux["redis-bits"]; bits != "" {
		out += " (" + bits + " bits)"
	}
	if mem := aux["used-mem"]; mem != "" {
		out += ", used-mem " + mem
	}
	return out
}

func typeCounts(types map[string]int64) string {
	names := make([]string, 0, len(types))
	for t := range types {
		names = append(names, t)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, t := range names {
		parts[i] = fmt.Sprintf("%s %d", t, types[t])
	}
	return strings.Join(parts, ", ")
}

// human renders a byte count the way operators read it.
func human(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f, i := float64(n), -1
	for f >= unit || f <= -unit {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", f, "KMGTPE"[i])
}

func ago(now, t time.Time) time.Duration {
	return now.Sub(t).Round(time.Second)
}
