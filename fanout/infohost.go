package fanout

import (
	"fmt"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// infoMemory reports the process's own memory, as tools read used_memory
// (redis-cli --stat, exporters): the proxy holds no dataset, so this is
// what the Go runtime holds from the OS. maxmemory is 0: there is no
// dataset to bound.
func (s *Server) infoMemory(b *strings.Builder) {
	b.WriteString("# Memory\r\n")
	used := goMemory()
	field(b, "used_memory", used)
	field(b, "used_memory_human", humanBytes(used))
	if rss, ok := residentBytes(); ok {
		field(b, "used_memory_rss", rss)
		field(b, "used_memory_rss_human", humanBytes(rss))
	}
	field(b, "maxmemory", 0)
	field(b, "maxmemory_human", "0B")
	field(b, "mem_allocator", "go")
}

// goMemory is what the Go runtime has mapped and not returned to the OS,
// read without stopping the world (runtime.ReadMemStats would).
func goMemory() int64 {
	sample := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(sample)
	var v [2]uint64
	for i, sm := range sample {
		if sm.Value.Kind() == metrics.KindUint64 {
			v[i] = sm.Value.Uint64()
		}
	}
	return int64(v[0] - min(v[1], v[0]))
}

// residentBytes reads the resident set from /proc (Linux only).
func residentBytes() (int64, bool) {
	raw, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(raw))
	if len(fields) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * int64(os.Getpagesize()), true
}

// humanBytes spells a byte count as Redis' *_human fields do.
func humanBytes(n int64) string {
	f := float64(n)
	for _, u := range []string{"B", "K", "M", "G", "T"} {
		if f < 1024 || u == "T" {
			if u == "B" {
				return strconv.FormatInt(n, 10) + "B"
			}
			return fmt.Sprintf("%.2f%s", f, u)
		}
		f /= 1024
	}
	return ""
}

// infoPersistence says what redis-cli --stat's "child" column reads: the
// proxy never loads a dataset, forks, saves or rewrites an AOF.
func (s *Server) infoPersistence(b *strings.Builder) {
	b.WriteString("# Persistence\r\n")
	field(b, "loading", 0)
	field(b, "async_loading", 0)
	field(b, "rdb_bgsave_in_progress", 0)
	field(b, "aof_enabled", 0)
	field(b, "aof_rewrite_in_progress", 0)
}

// infoCPU is the process's CPU time, and its children's (none: the proxy
// starts no process).
func (s *Server) infoCPU(b *strings.Builder) {
	b.WriteString("# CPU\r\n")
	for _, who := range []struct {
		suffix string
		which  int
	}{{"", unix.RUSAGE_SELF}, {"_children", unix.RUSAGE_CHILDREN}} {
		var ru unix.Rusage
		if err := unix.Getrusage(who.which, &ru); err != nil {
			continue
		}
		field(b, "used_cpu_sys"+who.suffix, seconds(ru.Stime))
		field(b, "used_cpu_user"+who.suffix, seconds(ru.Utime))
	}
}

func seconds(tv unix.Timeval) string {
	d := time.Duration(tv.Sec)*time.Second + time.Duration(tv.Usec)*time.Microsecond
	return strconv.FormatFloat(d.Seconds(), 'f', 6, 64)
}

// infoKeyspace is empty, as Redis' is with no keys: the proxy holds none.
func (s *Server) infoKeyspace(b *strings.Builder) {
	b.WriteString("# Keyspace\r\n")
}
