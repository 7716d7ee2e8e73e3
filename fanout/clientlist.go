package fanout

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/replproxy/replproxy/resp"
)

// connRegistry lists the open connections for CLIENT LIST. Each client
// publishes what the list shows as an immutable note before each command,
// so listing reads no field its owner's goroutine writes.
type connRegistry struct {
	mu     sync.Mutex
	byID   map[int64]*client
	nextID int64
}

// clientNote is one client as CLIENT LIST shows it, as of its last command.
type clientNote struct {
	name, user, cmd string
	sub, multi      int
	flags           string
	at              time.Time
}

func (r *connRegistry) add(c *client) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byID == nil {
		r.byID = map[int64]*client{}
	}
	r.nextID++
	c.id = r.nextID
	r.byID[c.id] = c
}

func (r *connRegistry) remove(c *client) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.byID, c.id)
}

func (r *connRegistry) list() []*client {
	r.mu.Lock()
	out := make([]*client, 0, len(r.byID))
	for _, c := range r.byID {
		out = append(out, c)
	}
	r.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out
}

// clientTrack holds what a client publishes about itself.
type clientTrack struct {
	id      int64
	created time.Time
	note    atomic.Pointer[clientNote]
}

// noteCommand counts a command and publishes the client's state as the
// command begins: a PSYNC shows while the replica streams.
func (c *client) noteCommand(args [][]byte) {
	c.srv.stats.Commands.Add(1)
	cmd := shownCommand(args)
	n := &clientNote{name: c.name, cmd: cmd, sub: len(c.channels), multi: -1, flags: "N", at: time.Now()}
	if c.user != nil {
		n.user = c.user.Name
	}
	if c.queued != nil {
		n.multi = len(c.queued)
	}
	switch {
	case cmd == "psync" || cmd == "sync":
		n.flags = "S"
	case n.sub > 0:
		n.flags = "P"
	case c.queued != nil:
		n.flags = "x"
	}
	c.note.Store(n)
}

// shownCommand is the cmd= field of CLIENT LIST. It names only commands
// the proxy knows, and a subcommand only when it is a short word: the
// line is split on blanks and newlines by tools, and whatever is shown is
// kept per client, outside the unauthenticated clients' buffer budget.
// Redis likewise shows only commands from its table.
func shownCommand(args [][]byte) string {
	cmd := strings.ToLower(string(args[0]))
	if !slices.Contains(knownCommands, cmd) {
		return "NULL"
	}
	if len(args) > 1 && (cmd == "client" || cmd == "config" || cmd == "cluster" || cmd == "command") &&
		len(args[1]) <= 32 && validClientName(args[1]) {
		cmd += "|" + strings.ToLower(string(args[1]))
	}
	return cmd
}

// validClientName is Redis' rule for CLIENT SETNAME: printable characters
// without blanks, so a name stays one field of one CLIENT LIST line.
func validClientName(name []byte) bool {
	for _, c := range name {
		if c < '!' || c > '~' {
			return false
		}
	}
	return true
}

// line is the client's CLIENT LIST line, with the fields the proxy knows
// (it keeps no per-client buffer accounting, so those fields are left out).
func (c *client) line(now time.Time) string {
	n := c.note.Load()
	if n == nil {
		n = &clientNote{multi: -1, flags: "N", at: c.created}
	}
	return fmt.Sprintf("id=%d addr=%s laddr=%s name=%s age=%d idle=%d flags=%s db=0 sub=%d psub=0 multi=%d cmd=%s user=%s resp=2",
		c.id, c.conn.RemoteAddr(), c.conn.LocalAddr(), n.name, int64(now.Sub(c.created).Seconds()),
		int64(now.Sub(n.at).Seconds()), n.flags, n.sub, n.multi, n.cmd, n.user)
}

// clientList answers CLIENT LIST [TYPE normal|replica|slave|pubsub] [ID id ...].
func (c *client) clientList(args [][]byte) {
	keep := func(*client, *clientNote) bool { return true }
	switch {
	case len(args) == 2:
	case len(args) == 4 && strings.EqualFold(string(args[2]), "type"):
		want, ok := map[string]string{"normal": "N", "replica": "S", "slave": "S", "pubsub": "P", "master": "M"}[strings.ToLower(string(args[3]))]
		if !ok {
			c.out = resp.AppendError(c.out, "ERR Unknown client type '"+string(args[3])+"'")
			return
		}
		keep = func(_ *client, n *clientNote) bool {
			flags := "N"
			if n != nil {
				flags = n.flags
			}
			return flags == want || (want == "N" && flags == "x")
		}
	case len(args) >= 4 && strings.EqualFold(string(args[2]), "id"):
		ids := map[int64]bool{}
		for _, a := range args[3:] {
			id, err := strconv.ParseInt(string(a), 10, 64)
			if err != nil || id <= 0 {
				c.out = resp.AppendError(c.out, "ERR Invalid client ID")
				return
			}
			ids[id] = true
		}
		keep = func(o *client, _ *clientNote) bool { return ids[o.id] }
	default:
		c.out = resp.AppendError(c.out, "ERR syntax error")
		return
	}
	now := time.Now()
	var b strings.Builder
	for _, o := range c.srv.conns.list() {
		if keep(o, o.note.Load()) {
			b.WriteString(o.line(now))
			b.WriteByte('\n')
		}
	}
	c.out = resp.AppendBulkString(c.out, b.String())
}

// clientHelp lists the CLIENT subcommands the proxy answers.
var clientHelp = []string{
	"CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
	"GETNAME",
	"    Return the name of the current connection.",
	"ID",
	"    Return the ID of the current connection.",
	"INFO",
	"    Return information about the current client connection.",
	"KILL <ip:port> | <option> <value> [...]",
	"    Accepted for Sentinel's reconfiguration; the proxy kills no client (returns 0).",
	"LIST [TYPE (NORMAL|REPLICA|PUBSUB)] [ID <id> [<id> ...]]",
	"    Return information about client connections.",
	"SETINFO <LIB-NAME|LIB-VER> <value>",
	"    Accepted and ignored.",
	"SETNAME <name>",
	"    Assign the name <name> to the current connection.",
	"HELP",
	"    Print this help.",
}

func (c *client) clientHelpReply() {
	c.out = resp.AppendArrayHeader(c.out, len(clientHelp))
	for _, l := range clientHelp {
		c.out = resp.AppendSimple(c.out, l)
	}
}

// knownCommands is every command dispatch answers (COMMAND COUNT).
var knownCommands = []string{
	"auth", "client", "cluster", "command", "config", "discard", "echo", "exec", "info", "multi", "ping",
	"psync", "publish", "quit", "replconf", "replicaof", "role", "select", "slaveof", "subscribe", "sync", "unsubscribe",
}

// command answers COMMAND COUNT with the number of commands the proxy
// knows. The rest (COMMAND, COMMAND DOCS, which redis-cli asks for at
// start) get an empty list: a valid answer that claims no documentation.
func (c *client) command(args [][]byte) {
	if len(args) == 2 && strings.EqualFold(string(args[1]), "count") {
		c.out = resp.AppendInt(c.out, int64(len(knownCommands)))
		return
	}
	c.out = resp.AppendArrayHeader(c.out, 0)
}
