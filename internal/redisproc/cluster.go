package redisproc

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterNodeTimeout keeps failure detection (and so a kill -9 failover)
// within a few seconds, yet long enough that a loaded machine does not see
// false failures.
const clusterNodeTimeout = "3000"

// Cluster is a Redis Cluster of real redis-server processes.
type Cluster struct {
	Nodes []*Server
	tb    TB
	args  []string // every node's extra arguments
}

func (c *Cluster) startNode(t TB) *Server {
	// The bus port is given explicitly: port+10000 may exceed 65535.
	a := append([]string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", clusterNodeTimeout,
		"--cluster-port", strconv.Itoa(FreePort(t)),
	}, c.args...)
	return Start(t, a...)
}

// AddReplica starts a new node and joins it to the cluster as a replica
// of primary, with redis-cli --cluster add-node.
func (c *Cluster) AddReplica(t TB, primary *Server) *Server {
	t.Helper()
	n := c.startNode(t)
	cmd := []string{"--cluster", "add-node", n.Addr(), primary.Addr(), "--cluster-slave", "--cluster-master-id", primary.NodeID()}
	if out, err := exec.Command("redis-cli", cmd...).CombinedOutput(); err != nil {
		t.Fatalf("redisproc: redis-cli %s: %v\n%s", strings.Join(cmd, " "), err, out)
	}
	c.Nodes = append(c.Nodes, n)
	c.WaitOK(t, 60*time.Second)
	return n
}

// ForgetNode removes a dead node: CLUSTER FORGET id on every live node,
// and from the harness.
func (c *Cluster) ForgetNode(t TB, dead *Server, id string) {
	t.Helper()
	c.Forget(dead)
	for _, n := range c.Live() {
		if _, err := n.Do("CLUSTER", "FORGET", id); err != nil {
			t.Fatalf("redisproc: %v", err)
		}
	}
	c.WaitOK(t, 60*time.Second)
}

// StartCluster starts primaries*(1+replicasEach) cluster-enabled servers,
// joins them with `redis-cli --cluster create` and waits until every node
// reports cluster_state:ok and knows every other node.
func StartCluster(t TB, primaries, replicasEach int, args ...string) *Cluster {
	t.Helper()
	if _, err := exec.LookPath("redis-cli"); err != nil {
		t.Fatalf("redisproc: %v", err)
	}
	c := &Cluster{tb: t, args: args}
	for range primaries * (1 + replicasEach) {
		c.Nodes = append(c.Nodes, c.startNode(t))
	}
	cmd := []string{"--cluster", "create"}
	for _, n := range c.Nodes {
		cmd = append(cmd, n.Addr())
	}
	cmd = append(cmd, "--cluster-replicas", strconv.Itoa(replicasEach), "--cluster-yes")
	if out, err := exec.Command("redis-cli", cmd...).CombinedOutput(); err != nil {
		t.Fatalf("redisproc: redis-cli %s: %v\n%s", strings.Join(cmd, " "), err, out)
	}
	c.WaitOK(t, 60*time.Second)
	// Every node starts as a master; wait until all agree on the roles.
	Eventually(t, 60*time.Second, "every node to see the replicas", func() (bool, string) {
		for _, n := range c.Nodes {
			nodes := fmt.Sprint(must(n.Do("CLUSTER", "NODES")))
			if got := strings.Count(nodes, "master"); got != primaries {
				return false, nodes
			}
		}
		return true, ""
	})
	return c
}

// WaitOK waits until every live node reports cluster_state:ok and knows
// every node of the harness, dead ones included (until forgotten).
func (c *Cluster) WaitOK(t TB, timeout time.Duration) {
	t.Helper()
	Eventually(t, timeout, "cluster_state:ok on every node", func() (bool, string) {
		for _, n := range c.Live() {
			info := parseInfo(fmt.Sprint(must(n.Do("CLUSTER", "INFO"))))
			if info["cluster_state"] != "ok" || info["cluster_known_nodes"] != strconv.Itoa(len(c.Nodes)) {
				return false, n.Addr() + " " + info["cluster_state"] + " known " + info["cluster_known_nodes"]
			}
		}
		return true, ""
	})
}

func must(v any, err error) any {
	if err != nil {
		return err.Error()
	}
	return v
}

// Live returns the nodes whose process runs.
func (c *Cluster) Live() []*Server {
	var out []*Server
	for _, n := range c.Nodes {
		if n.Running() {
			out = append(out, n)
		}
	}
	return out
}

// Forget drops a node from the harness, so WaitOK no longer expects it to
// be known (after CLUSTER FORGET on every other node).
func (c *Cluster) Forget(n *Server) {
	for i, m := range c.Nodes {
		if m == n {
			c.Nodes = append(c.Nodes[:i:i], c.Nodes[i+1:]...)
			return
		}
	}
}

// NodeID is CLUSTER MYID.
func (n *Server) NodeID() string {
	id, _ := n.Do("CLUSTER", "MYID")
	s, _ := id.(string)
	return s
}

// Primaries returns the live nodes whose INFO says role:master and that
// own slots, in node order.
func (c *Cluster) Primaries() []*Server {
	var out []*Server
	for _, n := range c.Live() {
		if n.Info("replication")["role"] == "master" && n.ownsSlots() {
			out = append(out, n)
		}
	}
	return out
}

func (n *Server) ownsSlots() bool {
	id := n.NodeID()
	for _, line := range strings.Split(fmt.Sprint(must(n.Do("CLUSTER", "NODES"))), "\n") {
		f := strings.Fields(line)
		if len(f) > 8 && f[0] == id {
			return true
		}
	}
	return false
}

// ReplicasOf returns the live nodes that replicate primary.
func (c *Cluster) ReplicasOf(primary *Server) []*Server {
	var out []*Server
	for _, n := range c.Live() {
		info := n.Info("replication")
		if info["role"] == "slave" && info["master_port"] == strconv.Itoa(primary.Port) {
			out = append(out, n)
		}
	}
	return out
}

// ClusterClient returns a go-redis cluster client seeded with every live
// node; it is closed when the test ends.
func (c *Cluster) ClusterClient() *redis.ClusterClient {
	var addrs []string
	for _, n := range c.Live() {
		addrs = append(addrs, n.Addr())
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: addrs, Protocol: 2, DisableIdentity: true,
		MaxRedirects: 16, DialTimeout: time.Second,
	})
	c.tb.Cleanup(func() { cc.Close() })
	return cc
}

// ClusterLoad writes string, hash, list and expiring keys through a
// cluster client until stopped, following MOVED and ASK redirections.
type ClusterLoad struct {
	cancel context.CancelFunc
	done   chan struct{}
	ops    int64
}

// StartClusterLoad writes to keys "k:<n>" (n below keys) through cc.
func StartClusterLoad(ctx context.Context, cc *redis.ClusterClient, keys int, seed int64) *ClusterLoad {
	ctx, cancel := context.WithCancel(ctx)
	l := &ClusterLoad{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for i := seed; ctx.Err() == nil; i++ {
			k := "k:" + strconv.FormatInt(i*7919%int64(keys), 10)
			var err error
			switch i % 4 {
			case 0:
				err = cc.Set(ctx, k+":s", i, 0).Err()
			case 1:
				err = cc.HSet(ctx, k+":h", "f"+strconv.FormatInt(i%5, 10), i).Err()
			case 2:
				err = cc.LPush(ctx, k+":l", i).Err()
				if err == nil {
					err = cc.LTrim(ctx, k+":l", 0, 9).Err()
				}
			case 3:
				err = cc.Set(ctx, k+":e", i, 50*time.Millisecond+time.Duration(i%20)*10*time.Millisecond).Err()
			}
			if err != nil {
				// A failover answers a few writes with errors until the
				// client sees the new slot map; the load keeps going.
				time.Sleep(50 * time.Millisecond)
				continue
			}
			l.ops++
		}
	}()
	return l
}

// Stop ends the load and returns how many writes succeeded.
func (l *ClusterLoad) Stop() int64 {
	l.cancel()
	<-l.done
	return l.ops
}
