package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// memStats is a process's memory from /proc/<pid>/status, in bytes.
type memStats struct {
	RSS, Peak, Anon, File int64
}

func readMem(pid int) (memStats, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memStats{}, err
	}
	var m memStats
	fields := map[string]*int64{"VmRSS": &m.RSS, "VmHWM": &m.Peak, "RssAnon": &m.Anon, "RssFile": &m.File}
	for _, l := range strings.Split(string(raw), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if dst := fields[k]; ok && dst != nil {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			*dst = kb << 10
		}
	}
	return m, nil
}

// clockTick is USER_HZ, which is 100 on every Linux this runs on; Go has no
// sysconf to ask.
const clockTick = 10 * time.Millisecond

// readCPU returns the user plus system time a process has used.
func readCPU(pid int) (time.Duration, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces and parentheses; fields resume
	// after the last ')'. utime and stime are fields 14 and 15.
	rest := string(raw[strings.LastIndexByte(string(raw), ')')+1:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * clockTick, nil
}
