package redisproc

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// cmdTimeout bounds one admin command, so that polling a paused or dead
// server returns an error instead of hanging the test.
const cmdTimeout = 5 * time.Second

// clientOptions are shared by every client the package hands out. RESP2
// without CLIENT SETINFO keeps them working against a RESP2-only server
// such as the proxy (go-redis still sends HELLO 2 first and falls back to
// plain RESP2 when that is answered with an error).
func clientOptions(addr string, db int) *redis.Options {
	return &redis.Options{
		Addr:                  addr,
		DB:                    db,
		Protocol:              2,
		DisableIdentity:       true,
		ContextTimeoutEnabled: true,
	}
}

// adminOptions tunes the client behind Do/Info for polling: fail fast and
// let the caller poll again, instead of go-redis retrying for seconds.
func adminOptions(o *redis.Options) {
	o.PoolSize = 2
	o.MaxRetries = 1
	o.DialerRetries = 1
	o.DialTimeout = time.Second
}

func newClient(addr string, db int, tune ...func(*redis.Options)) *redis.Client {
	o := clientOptions(addr, db)
	for _, f := range tune {
		f(o)
	}
	return redis.NewClient(o)
}

// Client returns a go-redis client for DB 0. It is closed when the test ends.
func (s *Server) Client() *redis.Client {
	return s.ClientDB(0)
}

// ClientDB returns a go-redis client for db. It is closed when the test ends.
func (s *Server) ClientDB(db int) *redis.Client {
	c := newClient(s.Addr(), db, s.viaSocket)
	s.mu.Lock()
	s.clients = append(s.clients, c)
	s.mu.Unlock()
	return c
}

func (s *Server) closeClients() {
	s.mu.Lock()
	clients := append(s.clients, s.admin)
	s.clients, s.admin = nil, nil
	s.mu.Unlock()
	for _, c := range clients {
		if c != nil {
			_ = c.Close() // a caller may have closed it already
		}
	}
}

func (s *Server) adminClient() (*redis.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.admin == nil {
		return nil, fmt.Errorf("redisproc: %s has no client (not started or cleaned up)", s.Addr())
	}
	return s.admin, nil
}

// Do runs one command against DB 0 and returns its reply.
func (s *Server) Do(args ...any) (any, error) {
	c, err := s.adminClient()
	if err != nil {
		return nil, err
	}
	return s.do(c, cmdTimeout, args)
}

func (s *Server) do(c *redis.Client, timeout time.Duration, args []any) (any, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	res, err := c.Do(ctx, args...).Result()
	if err != nil {
		return nil, fmt.Errorf("%s %v: %w", s.Addr(), args, err)
	}
	return res, nil
}

// DoWithin runs one slow command (DEBUG DIGEST of a large dataset on a
// busy machine) on a client of its own that waits up to timeout.
func (s *Server) DoWithin(timeout time.Duration, args ...any) (any, error) {
	c := newClient(s.Addr(), 0, adminOptions, s.viaSocket, func(o *redis.Options) { o.ReadTimeout = timeout })
	defer c.Close()
	return s.do(c, timeout, args)
}

// Info returns the "key:value" lines of INFO section (all default sections
// for ""). It returns an empty map on error because callers poll with it.
func (s *Server) Info(section string) map[string]string {
	args := []any{"INFO"}
	if section != "" {
		args = append(args, section)
	}
	res, err := s.Do(args...)
	if err != nil {
		return map[string]string{}
	}
	text, _ := res.(string)
	return parseInfo(text)
}

func parseInfo(text string) map[string]string {
	m := make(map[string]string)
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = v
		}
	}
	return m
}

// InfoInt returns an integer INFO field, or -1 when it is missing or the
// server does not answer.
func (s *Server) InfoInt(section, field string) int64 {
	v, ok := s.Info(section)[field]
	if !ok {
		return -1
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// Digest returns DEBUG DIGEST, a hash of the whole dataset, or "" when the
// server does not answer (callers poll).
func (s *Server) Digest() string {
	res, err := s.Do("DEBUG", "DIGEST")
	if err != nil {
		return ""
	}
	d, _ := res.(string)
	return d
}

// ReplicaOf points the server at a master; an empty host means
// REPLICAOF NO ONE.
func (s *Server) ReplicaOf(host string, port int) error {
	args := []any{"REPLICAOF", "NO", "ONE"}
	if host != "" {
		args = []any{"REPLICAOF", host, strconv.Itoa(port)}
	}
	if _, err := s.Do(args...); err != nil {
		return fmt.Errorf("replicaof: %w", err)
	}
	return nil
}

// rawCommand sends one command on a fresh connection and returns the first
// reply line ("+PONG", "-LOADING ..."). It is for the moments where a client
// pool would get in the way: probing a starting server and SHUTDOWN.
// A nil dial is net.Dialer's.
func rawCommand(dial func(ctx context.Context, network, addr string) (net.Conn, error), network, addr string, timeout time.Duration, args ...string) (string, error) {
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := dial(ctx, network, addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	var req strings.Builder
	fmt.Fprintf(&req, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&req, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := conn.Write([]byte(req.String())); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}
