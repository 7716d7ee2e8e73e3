package fanout

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/replproxy/replproxy/resp"
)

// client is one downstream connection until it issues PSYNC or SYNC, when
// it becomes a replica.
type client struct {
	srv  *Server
	conn net.Conn
	rd   *resp.Reader
	out  []byte
	log  zerolog.Logger
	user *User // nil until the client authenticates
	name string

	// wlock is held by whoever writes: pub/sub pushes and replies share
	// the connection. A channel, so that a publisher can give up waiting.
	wlock    chan struct{}
	channels map[string]struct{}
	queued   [][][]byte // non-nil inside MULTI
	queuedSz int        // bytes held by queued
	dirty    bool       // a queued command was refused: EXEC aborts
	inExec   bool

	clientTrack
	listeningPort int
	announcedIP   string
	capaEOF       bool
	capaPsync2    bool
	codecs        []string // compression codecs asked for with REPLCONF capa, best first
	capaRefresh   bool
	rdbOnly       bool
	// rdbNoData: REPLCONF rdb-filter-only "" (redis-cli --replica asks
	// for an RDB without keys, then the stream from now).
	rdbNoData bool
	// replicaVersion is what a Valkey replica announces; shown in INFO
	// and compared with the snapshot's producer.
	replicaVersion string
	// evicted is set, under the budget's lock, when the client is closed
	// to keep unauthenticated buffers within their budget.
	evicted bool
}

func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	// Protected mode comes first: a stranger it shuts out must not take a
	// client slot from the loopback peers, even for the refusal's second.
	if s.protectedModeDenies(conn) {
		s.stats.ProtectedDenied.Add(1)
		refuse(conn, deniedMsg)
		return
	}
	if !s.admit() {
		s.stats.RejectedConns.Add(1)
		refuse(conn, "ERR max number of clients reached")
		return
	}
	defer s.clientCount(-1)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c := &client{
		srv:      s,
		conn:     conn,
		log:      s.log.With().Str("peer", conn.RemoteAddr().String()).Logger(),
		user:     s.initialUser(),
		channels: map[string]struct{}{},
		wlock:    make(chan struct{}, 1),
	}
	c.created = time.Now()
	s.conns.add(c)
	defer s.conns.remove(c)
	// A small buffer: idle connections are cheap, and commands are small.
	br := bufio.NewReaderSize(conn, 4<<10)
	if c.user == nil {
		c.rd = resp.NewReader(br, resp.UnauthenticatedLimits())
		c.rd.SetMemoryHook(func(n int) error { return s.chargeUnauth(c, n) })
		defer s.releaseUnauth(c)
		conn.SetReadDeadline(time.Now().Add(s.cfg.AuthTimeout))
	} else {
		c.rd = resp.NewReader(br, resp.DefaultLimits())
	}
	defer c.leaveChannels()
	for {
		args, err := c.rd.ReadCommand()
		if err != nil {
			c.readFailed(err)
			return
		}
		if len(args) == 0 {
			continue // a bare newline: a keepalive
		}
		c.noteCommand(args)
		next := keepConn
		if !c.queue(args) {
			next = c.dispatch(ctx, args)
		}
		if err := c.flush(); err != nil {
			return
		}
		if next == stopConn {
			return
		}
		if next == becomeReplica {
			return // the replica's goroutines own the connection now and have finished
		}
	}
}

func (c *client) flush() error {
	if len(c.out) == 0 {
		return nil
	}
	c.wlock <- struct{}{}
	defer func() { <-c.wlock }()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.conn.Write(c.out)
	c.out = c.out[:0]
	return err
}

func (c *client) readFailed(err error) {
	if errors.Is(err, errEvicted) {
		return // counted and logged, at most once a second, by chargeUnauth
	}
	var pe *resp.ProtocolError
	if errors.As(err, &pe) {
		c.srv.stats.Rejected.Add(1)
		c.log.Warn().Str("reason", pe.Msg).Msg("closing client after a protocol error")
		c.conn.Write(resp.AppendError(nil, "ERR Protocol error: "+pe.Msg))
		return
	}
	var ne net.Error
	if c.user == nil && errors.As(err, &ne) && ne.Timeout() {
		c.srv.stats.AuthTimeouts.Add(1)
		c.log.Debug().Dur("auth_timeout", c.srv.cfg.AuthTimeout).Msg("closing a client that did not authenticate in time")
		return
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		c.log.Debug().Err(err).Msg("client connection ended")
	}
}

type outcome int

const (
	keepConn outcome = iota
	stopConn
	becomeReplica
)

func (c *client) dispatch(ctx context.Context, args [][]byte) outcome {
	cmd := strings.ToLower(string(args[0]))
	if c.user == nil {
		if cmd != "auth" && cmd != "quit" {
			c.out = resp.AppendError(c.out, "NOAUTH Authentication required.")
			return keepConn
		}
	} else if msg := c.user.denied(args); msg != "" {
		c.srv.stats.PermDenied.Add(1)
		c.out = resp.AppendError(c.out, msg)
		return keepConn
	}
	if len(args) < minArgs[cmd] {
		c.wrongArgs(cmd)
		return keepConn
	}
	switch cmd {
	case "ping":
		c.ping(args)
	case "auth":
		c.auth(args)
	case "replconf":
		c.replconf(args)
	case "psync", "sync":
		return c.startReplica(ctx, cmd, args)
	case "info":
		c.out = resp.AppendBulkString(c.out, c.srv.infoText(sectionArgs(args[1:])))
	case "role":
		c.out = c.srv.appendRole(c.out)
	case "quit":
		c.out = resp.AppendSimple(c.out, "OK")
		return stopConn
	case "client":
		c.clientCmd(args)
	case "select":
		c.selectDB(args)
	case "echo":
		if len(args) != 2 {
			c.wrongArgs(cmd)
			break
		}
		c.out = resp.AppendBulk(c.out, args[1])
	case "command":
		c.command(args)
	case "replicaof", "slaveof":
		c.replicaof(args)
	case "multi", "exec", "discard":
		c.transaction(ctx, cmd)
	case "config":
		c.config(args)
	case "subscribe":
		c.subscribeCmd(args)
	case "unsubscribe":
		c.unsubscribeCmd(args)
	case "publish":
		c.publishCmd(args)
	case "cluster":
		c.cluster(args)
	default:
		c.unknown(args)
	}
	return keepConn
}

// minArgs are the commands answered below that need more than their name.
var minArgs = map[string]int{"client": 2, "config": 2, "subscribe": 2}

func (c *client) wrongArgs(cmd string) {
	c.out = resp.AppendError(c.out, "ERR wrong number of arguments for '"+cmd+"' command")
}

func (c *client) unknown(args [][]byte) {
	var b strings.Builder
	for _, a := range args[1:] {
		if b.Len() > 128 {
			break
		}
		b.WriteString("'")
		b.Write(a)
		b.WriteString("' ")
	}
	name := string(args[0])
	if len(name) > 128 {
		name = name[:128]
	}
	c.out = resp.AppendError(c.out, "ERR unknown command '"+name+"', with args beginning with: "+b.String())
}

func (c *client) ping(args [][]byte) {
	switch len(args) {
	case 1:
		c.out = resp.AppendSimple(c.out, "PONG")
	case 2:
		c.out = resp.AppendBulk(c.out, args[1])
	default:
		c.wrongArgs("ping")
	}
}

// replconf follows Redis' rules: options in pairs, unknown capa ignored,
// ACK never answered.
func (c *client) replconf(args [][]byte) {
	if len(args)%2 == 0 {
		c.out = resp.AppendError(c.out, "ERR syntax error")
		return
	}
	for i := 1; i < len(args); i += 2 {
		opt, val := strings.ToLower(string(args[i])), string(args[i+1])
		switch opt {
		case "listening-port":
			port, err := strconv.Atoi(val)
			if err != nil || port < 0 || port > 65535 {
				c.out = resp.AppendError(c.out, "ERR value is not an integer or out of range")
				return
			}
			c.listeningPort = port
		case "ip-address":
			if len(val) >= 46 {
				c.out = resp.AppendError(c.out, "ERR REPLCONF ip-address provided by replica instance is too long: "+strconv.Itoa(len(val))+" bytes")
				return
			}
			if !announceable(val) {
				c.out = resp.AppendError(c.out, "ERR REPLCONF ip-address must be a host name or an IP address")
				return
			}
			c.announcedIP = val
		case "capa":
			switch strings.ToLower(val) {
			case "eof":
				c.capaEOF = true
			case "psync2":
				c.capaPsync2 = true
			case CapaZstd, CapaS2:
				if codec := codecOfCapa(strings.ToLower(val)); !slices.Contains(c.codecs, codec) && len(c.codecs) < len(AllCodecs()) {
					c.codecs = append(c.codecs, codec)
				}
			case CapaRefresh:
				c.capaRefresh = true
			}
		case "ack", "getack":
			return // meaningful only on a replica connection; never answered
		case "rdb-only":
			c.rdbOnly = val == "1"
		case "rdb-filter-only":
			if msg := c.rdbFilter(val); msg != "" {
				c.out = resp.AppendError(c.out, msg)
				return
			}
		case "version":
			if _, ok := parseVersion(val); !ok {
				c.out = resp.AppendError(c.out, "ERR Unrecognized version format: "+val[:min(len(val), 64)])
				return
			}
			c.replicaVersion = val
		default:
			c.out = resp.AppendError(c.out, "ERR Unrecognized REPLCONF option: "+string(args[i]))
			return
		}
	}
	c.out = resp.AppendSimple(c.out, "OK")
}

// announceable accepts what host names and IP addresses (IPv6 with a zone
// included) are made of. The address is printed into INFO's slaveN lines,
// which Sentinel parses: a CR LF, a comma or a blank would let a replica
// write fields of its own there, such as slave_priority.
func announceable(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '-' || c == '_' || c == ':' || c == '%'
		if !ok {
			return false
		}
	}
	return true
}

func (c *client) clientCmd(args [][]byte) {
	switch strings.ToLower(string(args[1])) {
	case "setname":
		if len(args) != 3 {
			c.wrongArgs("client|setname")
			return
		}
		if !validClientName(args[2]) {
			c.out = resp.AppendError(c.out, "ERR Client names cannot contain spaces, newlines or special characters.")
			return
		}
		c.name = string(args[2])
		c.out = resp.AppendSimple(c.out, "OK")
	case "getname":
		if c.name == "" {
			c.out = resp.AppendNullBulk(c.out)
			return
		}
		c.out = resp.AppendBulkString(c.out, c.name)
	case "setinfo":
		c.out = resp.AppendSimple(c.out, "OK")
	case "id":
		c.out = resp.AppendInt(c.out, c.id)
	case "list":
		c.clientList(args)
	case "info":
		c.out = resp.AppendBulkString(c.out, c.line(time.Now())+"\n")
	case "help":
		c.clientHelpReply()
	case "kill":
		// Sentinel kills normal and pub/sub clients after a reconfiguration
		// so they reconnect to the new master; nobody here holds data.
		c.out = resp.AppendInt(c.out, 0)
	default:
		c.out = resp.AppendError(c.out, "ERR unknown subcommand '"+string(args[1])+"'. Try CLIENT HELP.")
	}
}

func (c *client) selectDB(args [][]byte) {
	if len(args) != 2 {
		c.wrongArgs("select")
		return
	}
	if string(args[1]) != "0" {
		c.out = resp.AppendError(c.out, "ERR replproxy holds no data: only SELECT 0 is accepted")
		return
	}
	c.out = resp.AppendSimple(c.out, "OK")
}

func sectionArgs(args [][]byte) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = strings.ToLower(string(a))
	}
	return out
}
