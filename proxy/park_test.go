package proxy

import "testing"

// Sentinel's event payloads, as sentinelEvent formats them (sentinel.c).
func TestParseSentinelInstance(t *testing.T) {
	in, ok := parseSentinelInstance("slave 127.0.0.1:36251 127.0.0.1 36251 @ mymaster 127.0.0.1 39123")
	if !ok || in.kind != "slave" || in.addr != "127.0.0.1:36251" || in.masterName != "mymaster" || in.masterAt != "127.0.0.1:39123" {
		t.Fatalf("replica event: %+v %v", in, ok)
	}
	in, ok = parseSentinelInstance("master mymaster ::1 6379")
	if !ok || in.addr != "[::1]:6379" || in.masterAt != "[::1]:6379" || in.masterName != "mymaster" {
		t.Fatalf("master event: %+v %v", in, ok)
	}
	for _, bad := range []string{"", "slave x", "slave a b c # d e f", "sentinel 1 2"} {
		if _, ok := parseSentinelInstance(bad); ok {
			t.Fatalf("%q parsed", bad)
		}
	}
}
