package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// Issue 22, point 6: a proxy that never heard from its master reports
// master_last_io_seconds_ago:-1, as Redis does; status says so in words
// instead of "last byte -1s ago".
func TestStatusBeforeAnyByteFromTheMaster(t *testing.T) {
	info := map[string]string{
		"replproxy_version": "test", "uptime_in_seconds": "3", "ready": "0",
		"ready_reason": "no data yet", "master_host": "10.0.0.1", "master_port": "6379",
		"master_link_status": "down", "master_link_down_since_seconds": "3",
		"master_last_io_seconds_ago": "-1", "master_repl_offset": "0",
		"upstream_full_syncs": "0", "upstream_partial_syncs": "0", "upstream_bytes_received": "0",
		"backlog_first_offset": "0", "backlog_end_offset": "0", "backlog_bytes": "0", "backlog_max_bytes": "1024",
	}
	var out bytes.Buffer
	renderStatus(&out, "127.0.0.1:6380", info, time.Now())
	if strings.Contains(out.String(), "-1s") || !strings.Contains(out.String(), "no byte from the master yet") {
		t.Fatalf("status before any byte:\n%s", out.String())
	}
	info["master_last_io_seconds_ago"] = "2"
	out.Reset()
	renderStatus(&out, "127.0.0.1:6380", info, time.Now())
	if !strings.Contains(out.String(), "last byte 2s ago") {
		t.Fatalf("status after a byte:\n%s", out.String())
	}
}
