package fanout

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/replproxy/replproxy/resp"
)

// Role is what a user may do on the proxy's port, in the manner of a Redis
// ACL: each kind of peer gets only what it needs.
type Role string

const (
	// RoleReplica is for Redis replicas (masteruser/masterauth): the
	// handshake and the stream, nothing that changes the proxy.
	RoleReplica Role = "replica"
	// RoleMonitor is for Sentinel without failover rights, and for
	// exporters: reading state and the hello channel.
	RoleMonitor Role = "monitor"
	// RoleProxy is for downstream replproxies: a replica's commands, and
	// also REPLCONF capa replproxy-refresh, which may fork the master.
	RoleProxy Role = "proxy"
	// RoleAdmin may do everything, REPLICAOF included.
	RoleAdmin Role = "admin"
)

// DefaultUser is the user AUTH <password> authenticates as; requirepass is
// its password.
const DefaultUser = "default"

// HelloChannel is where Sentinels find each other.
const HelloChannel = "__sentinel__:hello"

// User is one downstream account. Only the password's SHA-256 is kept, as
// Redis keeps it.
type User struct {
	Name     string
	PassHash [sha256.Size]byte
	Role     Role
}

// Valid reports whether r names a role.
func (r Role) Valid() bool {
	return r == RoleReplica || r == RoleMonitor || r == RoleProxy || r == RoleAdmin
}

// mayRefresh says whether u's capa replproxy-refresh is honoured: it makes
// the proxy fork its master for a newer snapshot, which a Redis replica
// never needs and a replica-role password must not be able to ask for.
func (u *User) mayRefresh() bool { return u.Role == RoleAdmin || u.Role == RoleProxy }

// roleCommands lists what each limited role may run; "cmd|sub" names a
// subcommand, as Redis' ACL does. AUTH and QUIT are open to everyone.
var roleCommands = map[Role]map[string]bool{
	RoleReplica: setOf("auth", "quit", "ping", "replconf", "psync", "sync", "info", "role"),
	RoleProxy:   setOf("auth", "quit", "ping", "replconf", "psync", "sync", "info", "role"),
	// CLUSTER SLOTS and SHARDS are read-only: far-side cluster clients
	// need them, and must not need credentials that can repoint the proxy.
	RoleMonitor: setOf("auth", "quit", "ping", "info", "role", "client|setname", "client|getname", "subscribe",
		"cluster|slots", "cluster|shards"),
}

func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

// denied returns Redis' -NOPERM error text when u may not run args, or "".
func (u *User) denied(args [][]byte) string {
	if u.Role == RoleAdmin {
		return ""
	}
	name := strings.ToLower(string(args[0]))
	if (name == "client" || name == "cluster") && len(args) > 1 {
		name += "|" + strings.ToLower(string(args[1]))
	}
	if !roleCommands[u.Role][name] {
		return fmt.Sprintf("NOPERM User %s has no permissions to run the '%s' command", u.Name, clip(name, 64))
	}
	if name == "subscribe" {
		for _, ch := range args[1:] {
			if string(ch) != HelloChannel {
				return fmt.Sprintf("NOPERM User %s has no permissions to access the '%s' channel", u.Name, clip(string(ch), 64))
			}
		}
	}
	return ""
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// lookup finds the user AUTH names and checks its password in constant
// time; nil means the pair is wrong, with no hint which half.
func (s *Server) lookup(name string, pass []byte) *User {
	u, ok := s.users[name]
	sum := sha256.Sum256(pass)
	if !ok {
		return nil
	}
	if subtle.ConstantTimeCompare(sum[:], u.PassHash[:]) != 1 {
		return nil
	}
	return u
}

// openAccess is who a client is before AUTH when no credential is
// configured at all: the default user, unrestricted, as in Redis.
var openAccess = &User{Name: DefaultUser, Role: RoleAdmin}

// initialUser is nil when the client must authenticate first.
func (s *Server) initialUser() *User {
	if len(s.users) == 0 {
		return openAccess
	}
	return nil
}

// protectedModeDenies is Redis' protected mode: with no credential
// configured, only loopback clients are served.
func (s *Server) protectedModeDenies(conn net.Conn) bool {
	if !s.cfg.ProtectedMode || len(s.users) > 0 {
		return false
	}
	tcp, ok := conn.RemoteAddr().(*net.TCPAddr)
	return ok && !tcp.IP.IsLoopback()
}

const deniedMsg = "DENIED replproxy is running in protected mode because protected mode is enabled and no password is set for the default user. " +
	"In this mode connections are only accepted from the loopback interface. " +
	"If you want to connect from external computers to replproxy you may adopt one of the following solutions: " +
	"1) Set a password with requirepass (or requirepass_file), or define users with roles in the users: list of the configuration, and restart the proxy. " +
	"2) If the port is reachable only by trusted hosts, set protected_mode: no in the configuration and restart the proxy; " +
	"MAKE SURE the proxy is not publicly accessible from the internet if you do so: it serves the whole dataset and can be repointed. " +
	"NOTE: You only need to do one of the above things in order for the proxy to start accepting connections from the outside."

// refuse answers a connection that will not be served and closes it.
// It reads what the peer already sent, for a moment, so that the close does
// not turn into a reset that would discard the error before it is read.
// The read deadline is set before the write too: on a TLS port the write
// runs the handshake, which waits for the peer's ClientHello.
func refuse(conn net.Conn, msg string) {
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write(resp.AppendError(nil, msg)); err != nil {
		return
	}
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	io.Copy(io.Discard, io.LimitReader(conn, 64<<10))
}

// admit takes a client slot, unless maxclients are already connected.
func (s *Server) admit() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clients >= s.cfg.MaxClients {
		return false
	}
	s.clients++
	return true
}

// failureLog writes AUTH failures at most once a second: a password
// guesser must not be able to flood the log. Each line counts the failures
// since the previous one.
type failureLog struct {
	mu      sync.Mutex
	last    time.Time
	pending int
}

// note counts one failure and says whether to log now, and how many.
func (f *failureLog) note(now time.Time) (int, bool) { return f.noteN(now, 1) }

// noteN counts n failures at once.
func (f *failureLog) noteN(now time.Time, n int) (int, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending += n
	if now.Sub(f.last) < time.Second {
		return 0, false
	}
	k := f.pending
	f.pending, f.last = 0, now
	return k, true
}

func (c *client) auth(args [][]byte) {
	var name string
	var pass []byte
	switch len(args) {
	case 2:
		name, pass = DefaultUser, args[1]
		if len(c.srv.users) == 0 {
			c.out = resp.AppendError(c.out, "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
			return
		}
	case 3:
		name, pass = string(args[1]), args[2]
	default:
		c.wrongArgs("auth")
		return
	}
	u := c.srv.lookup(name, pass)
	if u == nil {
		c.authFailed(name)
		c.out = resp.AppendError(c.out, "WRONGPASS invalid username-password pair or user is disabled.")
		return
	}
	if c.user == nil {
		// Authenticated: the limits for strangers and their deadline end.
		c.rd.SetLimits(resp.DefaultLimits())
		c.rd.SetMemoryHook(nil)
		c.srv.releaseUnauth(c)
		c.conn.SetReadDeadline(time.Time{})
	}
	c.user = u
	c.log = c.srv.log.With().Str("peer", c.conn.RemoteAddr().String()).Str("user", u.Name).Logger()
	c.out = resp.AppendSimple(c.out, "OK")
}

func (c *client) authFailed(name string) {
	c.srv.stats.AuthFailures.Add(1)
	if n, ok := c.srv.authFails.note(time.Now()); ok {
		c.log.Warn().Str("user", clip(name, 64)).Int("failures", n).
			Msg("AUTH failed (logged at most once a second; failures counts those since the last line)")
	}
}
