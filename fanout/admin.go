package fanout

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/replproxy/replproxy/resp"
)

// replicaof moves the upstream link, as REPLICAOF does on a replica. The
// proxy holds no data of its own, so it must never become a master.
func (c *client) replicaof(args [][]byte) {
	if len(args) != 3 {
		c.wrongArgs(strings.ToLower(string(args[0])))
		return
	}
	host, portArg := string(args[1]), string(args[2])
	if strings.EqualFold(host, "no") && strings.EqualFold(portArg, "one") {
		c.log.Warn().Msg("refused REPLICAOF NO ONE: the proxy holds no data and cannot be promoted")
		c.out = resp.AppendError(c.out, "ERR replproxy holds no data and cannot be promoted to master: REPLICAOF NO ONE is refused; promote a Redis replica instead")
		return
	}
	port, err := strconv.Atoi(portArg)
	if err != nil || port < 0 || port > 65535 {
		c.out = resp.AppendError(c.out, "ERR Invalid master port")
		return
	}
	if c.namesItself(host, port) {
		c.log.Warn().Str("master", net.JoinHostPort(host, strconv.Itoa(port))).Msg("refused REPLICAOF naming the proxy itself")
		c.out = resp.AppendError(c.out, "ERR "+net.JoinHostPort(host, strconv.Itoa(port))+" is this replproxy itself: replicating from itself would stall the link while it reports up")
		return
	}
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	if !c.srv.cfg.Upstream.Repoint(addr, strings.ToUpper(string(args[0]))+" from "+c.conn.RemoteAddr().String()) {
		c.out = resp.AppendSimple(c.out, "OK Already connected to specified master")
		return
	}
	c.out = resp.AppendSimple(c.out, "OK")
}

// queue holds commands until EXEC, as Sentinel's reconfiguration
// (MULTI; SLAVEOF; CONFIG REWRITE; CLIENT KILL...; EXEC) expects. The queue
// is capped: it is a copy of what the client sent. As in Redis, a command
// refused while queueing makes EXEC abort the whole transaction.
func (c *client) queue(args [][]byte) bool {
	if c.queued == nil {
		return false
	}
	switch strings.ToLower(string(args[0])) {
	case "exec", "discard", "multi":
		return false
	}
	if c.dirty {
		c.out = resp.AppendError(c.out, "ERR transaction already failed: EXEC will abort it")
		return true
	}
	if c.user == nil {
		c.out = resp.AppendError(c.out, "NOAUTH Authentication required.")
		c.dirty = true
		return true
	}
	if msg := c.user.denied(args); msg != "" {
		c.srv.stats.PermDenied.Add(1)
		c.out = resp.AppendError(c.out, msg)
		c.dirty = true
		return true
	}
	size := 0
	for _, a := range args {
		size += len(a)
	}
	if len(c.queued) >= c.srv.cfg.MultiMaxCommands || c.queuedSz+size > c.srv.cfg.MultiMaxBytes {
		c.out = resp.AppendError(c.out, fmt.Sprintf("ERR MULTI queue limit reached (%d commands, %d bytes): the transaction will be aborted",
			c.srv.cfg.MultiMaxCommands, c.srv.cfg.MultiMaxBytes))
		c.queued, c.queuedSz, c.dirty = [][][]byte{}, 0, true
		return true
	}
	cp := make([][]byte, len(args))
	for i, a := range args {
		cp[i] = append([]byte(nil), a...)
	}
	c.queued = append(c.queued, cp)
	c.queuedSz += size
	c.out = resp.AppendSimple(c.out, "QUEUED")
	return true
}

func (c *client) transaction(ctx context.Context, cmd string) {
	switch cmd {
	case "multi":
		if c.queued != nil {
			c.out = resp.AppendError(c.out, "ERR MULTI calls can not be nested")
			return
		}
		c.queued = [][][]byte{}
		c.out = resp.AppendSimple(c.out, "OK")
	case "discard", "exec":
		if c.queued == nil {
			c.out = resp.AppendError(c.out, "ERR "+strings.ToUpper(cmd)+" without MULTI")
			return
		}
		queued, dirty := c.queued, c.dirty
		c.queued, c.queuedSz, c.dirty = nil, 0, false
		if cmd == "discard" {
			c.out = resp.AppendSimple(c.out, "OK")
			return
		}
		if dirty {
			c.out = resp.AppendError(c.out, "EXECABORT Transaction discarded because of previous errors.")
			return
		}
		c.out = resp.AppendArrayHeader(c.out, len(queued))
		c.inExec = true
		for _, args := range queued {
			c.dispatch(ctx, args)
		}
		c.inExec = false
	}
}

func (c *client) config(args [][]byte) {
	switch strings.ToLower(string(args[1])) {
	case "rewrite":
		// The proxy's configuration is its YAML file, which it never
		// rewrites; a repoint lasts until restart (or Sentinel redoes it).
		c.out = resp.AppendSimple(c.out, "OK")
	case "get":
		c.out = resp.AppendArrayHeader(c.out, 0)
	default:
		c.out = resp.AppendError(c.out, "ERR CONFIG "+strings.ToUpper(string(args[1]))+" is not supported by replproxy")
	}
}

// namesItself says whether host:port is the address this client reached
// the proxy on ("localhost" when that is a loopback one). Other names of
// the same socket (a resolver's, another interface's) are not checked: no
// lookup on this path, and another loopback address may be another server.
func (c *client) namesItself(host string, port int) bool {
	local, ok := c.conn.LocalAddr().(*net.TCPAddr)
	if !ok || local.Port != port {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return local.IP.IsLoopback()
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.Equal(local.IP)
}
