package fanout

import (
	"crypto/sha1"
	"encoding/hex"
	"net"
	"strconv"
	"strings"

	"github.com/replproxy/replproxy/resp"
)

// SlotShard is one shard of the slot map that far-side clients are given:
// its slot ranges and the far-side replicas that hold it.
type SlotShard struct {
	Slots [][2]int
	Nodes []Endpoint // the first is presented as the shard's primary
}

// Endpoint is a far-side replica as it announced itself.
type Endpoint struct {
	IP   string
	Port int
}

// id is stable per endpoint, so that a client's view survives a reload of
// the slot map; cluster clients expect 40 hex digits.
func (e Endpoint) id() string {
	sum := sha1.Sum([]byte(net.JoinHostPort(e.IP, strconv.Itoa(e.Port))))
	return hex.EncodeToString(sum[:])
}

// clusterHooks are set in cluster mode only.
type clusterHooks struct {
	slotMap   func() []SlotShard
	shardInfo func() []KV
}

// SetSlotMap makes CLUSTER SLOTS and CLUSTER SHARDS answer with the map f
// returns; call it before Serve.
func (s *Server) SetSlotMap(f func() []SlotShard) { s.cluster.slotMap = f }

// SetShardInfo adds an INFO shard section; call it before Serve.
func (s *Server) SetShardInfo(f func() []KV) { s.cluster.shardInfo = f }

func (s *Server) infoShard(b *strings.Builder) {
	b.WriteString("# Shard\r\n")
	for _, kv := range s.cluster.shardInfo() {
		field(b, kv.Key, kv.Value)
	}
}

// cluster answers the read-only CLUSTER subcommands a cluster-aware client
// needs to find the far side; the proxy itself holds no slots.
func (c *client) cluster(args [][]byte) {
	if c.srv.cluster.slotMap == nil {
		c.out = resp.AppendError(c.out, "ERR This instance has cluster support disabled")
		return
	}
	if len(args) < 2 {
		c.wrongArgs("cluster")
		return
	}
	switch strings.ToLower(string(args[1])) {
	case "slots":
		c.out = appendClusterSlots(c.out, c.srv.cluster.slotMap())
	case "shards":
		c.out = appendClusterShards(c.out, c.srv.cluster.slotMap())
	default:
		c.out = resp.AppendError(c.out, "ERR replproxy answers only CLUSTER SLOTS and CLUSTER SHARDS, with the far-side replicas")
	}
}

func appendClusterSlots(out []byte, shards []SlotShard) []byte {
	n := 0
	for _, sh := range shards {
		n += len(sh.Slots)
	}
	out = resp.AppendArrayHeader(out, n)
	for _, sh := range shards {
		for _, r := range sh.Slots {
			out = resp.AppendArrayHeader(out, 2+len(sh.Nodes))
			out = resp.AppendInt(out, int64(r[0]))
			out = resp.AppendInt(out, int64(r[1]))
			for _, e := range sh.Nodes {
				out = resp.AppendArrayHeader(out, 3)
				out = resp.AppendBulkString(out, e.IP)
				out = resp.AppendInt(out, int64(e.Port))
				out = resp.AppendBulkString(out, e.id())
			}
		}
	}
	return out
}

func appendClusterShards(out []byte, shards []SlotShard) []byte {
	out = resp.AppendArrayHeader(out, len(shards))
	for _, sh := range shards {
		out = resp.AppendArrayHeader(out, 4)
		out = resp.AppendBulkString(out, "slots")
		out = resp.AppendArrayHeader(out, 2*len(sh.Slots))
		for _, r := range sh.Slots {
			out = resp.AppendInt(out, int64(r[0]))
			out = resp.AppendInt(out, int64(r[1]))
		}
		out = resp.AppendBulkString(out, "nodes")
		out = resp.AppendArrayHeader(out, len(sh.Nodes))
		for i, e := range sh.Nodes {
			role := "replica"
			if i == 0 {
				role = "master"
			}
			out = resp.AppendArrayHeader(out, 12)
			for _, kv := range [][2]string{{"id", e.id()}, {"ip", e.IP}, {"endpoint", e.IP}, {"role", role}, {"health", "online"}} {
				out = resp.AppendBulkString(out, kv[0])
				out = resp.AppendBulkString(out, kv[1])
			}
			out = resp.AppendBulkString(out, "port")
			out = resp.AppendInt(out, int64(e.Port))
		}
	}
	return out
}
