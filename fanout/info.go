package fanout

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/replproxy/replproxy/resp"
)

// The sections INFO knows, in output order. A plain INFO, like Redis',
// returns all of them.
var infoSections = []string{"server", "clients", "memory", "persistence", "replication", "replicas", "stats", "cpu", "backlog", "proxy", "shard", "keyspace"}

func (s *Server) infoText(args []string) string {
	want := map[string]bool{}
	for _, a := range args {
		want[a] = true
	}
	all := len(args) == 0 || want["all"] || want["everything"] || want["default"]
	var b strings.Builder
	for _, sec := range infoSections {
		if (!all && !want[sec]) || (sec == "shard" && s.cluster.shardInfo == nil) {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("\r\n")
		}
		switch sec {
		case "server":
			s.infoServer(&b)
		case "clients":
			s.infoClients(&b)
		case "memory":
			s.infoMemory(&b)
		case "persistence":
			s.infoPersistence(&b)
		case "cpu":
			s.infoCPU(&b)
		case "keyspace":
			s.infoKeyspace(&b)
		case "replication":
			s.infoReplication(&b)
		case "replicas":
			s.infoReplicas(&b)
		case "stats":
			s.infoStats(&b)
		case "backlog":
			s.infoBacklog(&b)
		case "proxy":
			s.infoProxy(&b)
		case "shard":
			s.infoShard(&b)
		}
	}
	return b.String()
}

func field(b *strings.Builder, k string, v any) {
	fmt.Fprintf(b, "%s:%v\r\n", k, v)
}

func (s *Server) infoServer(b *strings.Builder) {
	b.WriteString("# Server\r\n")
	field(b, "redis_version", "7.0.0") // what tools compare against: the protocol level spoken
	field(b, "replproxy_version", s.cfg.Version)
	field(b, "redis_mode", "standalone")
	field(b, "os", runtime.GOOS+" "+runtime.GOARCH)
	field(b, "process_id", os.Getpid())
	field(b, "run_id", s.cfg.RunID)
	field(b, "tcp_port", s.cfg.Port)
	up := time.Since(s.started)
	field(b, "uptime_in_seconds", int64(up.Seconds()))
	field(b, "uptime_in_days", int64(up.Hours()/24))
	field(b, "executable", executable())
}

func executable() string {
	p, err := os.Executable()
	if err != nil {
		return ""
	}
	return p
}

func (s *Server) infoClients(b *strings.Builder) {
	b.WriteString("# Clients\r\n")
	field(b, "connected_clients", s.clientCount(0))
	field(b, "blocked_clients", 0) // no command here blocks
	field(b, "maxclients", s.cfg.MaxClients)
}

func (s *Server) infoReplication(b *strings.Builder) {
	st := s.cfg.Store.State()
	link := s.cfg.Upstream.LinkStatus()
	now := time.Now()
	b.WriteString("# Replication\r\n")
	field(b, "role", "slave")
	field(b, "master_host", link.MasterHost)
	field(b, "master_port", link.MasterPort)
	up := link.State == LinkConnected
	field(b, "master_link_status", map[bool]string{true: "up", false: "down"}[up])
	lastIO := int64(-1)
	if !link.LastIO.IsZero() {
		lastIO = int64(now.Sub(link.LastIO).Seconds())
	}
	field(b, "master_last_io_seconds_ago", lastIO)
	syncing := link.State == LinkSync
	field(b, "master_sync_in_progress", map[bool]int{true: 1, false: 0}[syncing])
	if syncing {
		infoSyncProgress(b, link)
	}
	field(b, "slave_read_repl_offset", st.MasterReplOffset())
	field(b, "slave_repl_offset", st.MasterReplOffset())
	if !up && !link.DownSince.IsZero() {
		field(b, "master_link_down_since_seconds", int64(now.Sub(link.DownSince).Seconds()))
	}
	field(b, "slave_priority", 0) // the proxy holds no data: it must never be promoted
	field(b, "slave_read_only", 1)
	field(b, "replica_announced", 1)
	reps := s.Replicas()
	field(b, "connected_slaves", len(reps))
	for i, r := range reps {
		lag := int64(now.Sub(r.AckTime).Seconds())
		fmt.Fprintf(b, "slave%d:ip=%s,port=%d,state=%s,offset=%d,lag=%d,lag_bytes=%d,sent_bytes=%d,connected_seconds=%d%s\r\n",
			i, r.IP, r.Port, r.State, r.AckOffset, lag, max(st.End-r.SentOff, 0), r.SentBytes, int64(now.Sub(r.Since).Seconds()), versionField(r)+unknownField(r))
	}
	field(b, "master_failover_state", "no-failover")
	field(b, "master_replid", st.ReplID)
	field(b, "master_replid2", st.ReplID2)
	field(b, "master_repl_offset", st.MasterReplOffset())
	field(b, "second_repl_offset", st.SecondOffset)
	field(b, "repl_backlog_active", map[bool]int{true: 1, false: 0}[st.HasHistory])
	field(b, "repl_backlog_size", s.cfg.BacklogMaxBytes)
	field(b, "repl_backlog_first_byte_offset", st.First)
	field(b, "repl_backlog_histlen", st.End-st.First)
}

// versionField appends the version a replica announced (Valkey does);
// Redis replicas announce none, and the field is left out.
func versionField(r ReplicaInfo) string {
	if r.Version == "" {
		return ""
	}
	return ",version=" + r.Version
}

// unknownField appends the count of relayed commands the replica's
// server does not know, for a replica whose stream is scanned for them.
func unknownField(r ReplicaInfo) string {
	if !r.Watched {
		return ""
	}
	return ",unknown_commands=" + strconv.FormatInt(r.UnknownCommands, 10)
}

// infoReplicas details each replica beyond what the slaveN lines carry,
// for an operator chasing a slow one.
func (s *Server) infoReplicas(b *strings.Builder) {
	end := s.cfg.Store.State().End
	now := time.Now()
	b.WriteString("# Replicas\r\n")
	for i, r := range s.Replicas() {
		fmt.Fprintf(b, "replica%d:ip=%s,port=%d,state=%s,ack_offset=%d,sent_offset=%d,lag_bytes=%d,lag_seconds=%d,sent_bytes=%d,connected_since=%d,connected_seconds=%d%s",
			i, r.IP, r.Port, r.State, r.AckOffset, r.SentOff-1, max(end-r.SentOff, 0), int64(now.Sub(r.AckTime).Seconds()),
			r.SentBytes, r.Since.Unix(), int64(now.Sub(r.Since).Seconds()), versionField(r)+unknownField(r))
		if r.Codec != "" {
			b.WriteString(",codec=" + r.Codec)
		}
		if r.WaitReason != "" {
			fmt.Fprintf(b, ",wait_reason=%s,wait_seconds=%d", r.WaitReason, int64(now.Sub(r.WaitSince).Seconds()))
		}
		b.WriteString("\r\n")
	}
}

func (s *Server) infoStats(b *strings.Builder) {
	b.WriteString("# Stats\r\n")
	field(b, "total_connections_received", s.stats.Connections.Load())
	field(b, "total_commands_processed", s.stats.Commands.Load())
	field(b, "sync_full", s.stats.SyncFull.Load())
	field(b, "sync_partial_ok", s.stats.SyncPartialOK.Load())
	field(b, "sync_partial_err", s.stats.SyncPartialErr.Load())
	field(b, "sync_full_paced", s.stats.SyncFullPaced.Load())
	field(b, "rejected_protocol_errors", s.stats.Rejected.Load())
	field(b, "compressed_stream_bytes", s.stats.CompressedRaw.Load())
	field(b, "compressed_wire_bytes", s.stats.CompressedWire.Load())
	field(b, "stream_bytes_from_memory", s.stats.SentFromMemory.Load())
	field(b, "stream_bytes_from_disk", s.stats.SentFromDisk.Load())
	field(b, "rejected_connections", s.stats.RejectedConns.Load())
	field(b, "protected_mode_denied", s.stats.ProtectedDenied.Load())
	field(b, "acl_access_denied_auth", s.stats.AuthFailures.Load())
	field(b, "acl_access_denied_cmd", s.stats.PermDenied.Load())
	field(b, "auth_timeouts", s.stats.AuthTimeouts.Load())
	field(b, "evicted_clients", s.stats.EvictedClients.Load())
	for _, kv := range s.convertInfo() {
		field(b, kv.Key, kv.Value)
	}
	if s.cfg.ExtraStats != nil {
		for _, kv := range s.cfg.ExtraStats() {
			field(b, kv.Key, kv.Value)
		}
	}
}

func (s *Server) infoBacklog(b *strings.Builder) {
	st := s.cfg.Store.State()
	sync := s.cfg.Store.SyncStats()
	b.WriteString("# Backlog\r\n")
	field(b, "backlog_first_offset", st.First)
	field(b, "backlog_end_offset", st.End)
	field(b, "backlog_bytes", st.End-st.First)
	field(b, "backlog_max_bytes", s.cfg.BacklogMaxBytes)
	field(b, "backlog_durable_offset", st.Durable)
	field(b, "backlog_epoch", st.Epoch)
	if st.Snapshot != nil {
		field(b, "snapshot_offset", st.Snapshot.Offset)
		field(b, "snapshot_bytes", st.Snapshot.Size)
		field(b, "snapshot_replid", st.Snapshot.ReplID)
	}
	field(b, "fsync_policy", s.cfg.Fsync)
	field(b, "fsync_count", sync.Count)
	field(b, "fsync_last_usec", sync.Last.Microseconds())
	field(b, "fsync_max_usec", sync.Max.Microseconds())
	field(b, "fsync_slow_count", sync.Slow)
	errText := ""
	if sync.LastErr != nil {
		errText = sync.LastErr.Error()
	}
	field(b, "fsync_last_error", errText)
}

// appendRole answers ROLE as a replica does: the proxy is one, to its master.
func (s *Server) appendRole(out []byte) []byte {
	link := s.cfg.Upstream.LinkStatus()
	st := s.cfg.Store.State()
	out = resp.AppendArrayHeader(out, 5)
	out = resp.AppendBulkString(out, "slave")
	out = resp.AppendBulkString(out, link.MasterHost)
	out = resp.AppendInt(out, int64(link.MasterPort))
	out = resp.AppendBulkString(out, link.State.String())
	off := int64(-1)
	if st.HasHistory {
		off = st.MasterReplOffset()
	}
	return resp.AppendInt(out, off)
}

// KV is one extra INFO field.
type KV struct {
	Key   string
	Value any
}
