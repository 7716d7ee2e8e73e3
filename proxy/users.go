package proxy

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/replproxy/replproxy/fanout"
	"github.com/replproxy/replproxy/rdbconvert"
)

// UserConfig is one downstream account, like an ACL user in Redis: a name,
// a password (or "#" and its SHA-256 in hex, as ACL SETUSER takes it), and
// a role: replica, monitor, proxy or admin.
type UserConfig struct {
	Name         string `yaml:"name"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	Role         string `yaml:"role"`
	// RDBFormat is what replicas authenticating as this user load, when
	// they announce no version; it overrides replicas.rdb_format.
	RDBFormat string `yaml:"rdb_format"`
}

// loadSecrets reads every *password_file into its password, so that no
// secret need be written in the configuration or on a command line. A
// password given both ways is an error: which one wins would be a guess.
func (c *Config) loadSecrets() error {
	pairs := []struct {
		name       string
		value, src *string
	}{
		{"requirepass", &c.RequirePass, &c.RequirePassFile},
		{"master.password", &c.Master.Password, &c.Master.PasswordFile},
		{"master.sentinel.password", &c.Master.Sentinel.Password, &c.Master.Sentinel.PasswordFile},
	}
	for i := range c.Users {
		u := &c.Users[i]
		pairs = append(pairs, struct {
			name       string
			value, src *string
		}{fmt.Sprintf("users[%d] (%s) password", i, u.Name), &u.Password, &u.PasswordFile})
	}
	for _, p := range pairs {
		if *p.src == "" {
			continue
		}
		if *p.value != "" {
			return fmt.Errorf("%s is set both directly (or by its environment variable) and by a file (%s): set one", p.name, *p.src)
		}
		if err := c.checkSecretFile(*p.src); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		secret, err := readSecret(*p.src)
		if err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		*p.value, *p.src = secret, ""
	}
	for _, f := range []string{c.MetricsBearerTokenFile, c.MetricsBasicAuthFile} {
		if err := c.checkSecretFile(f); f != "" && err != nil {
			return err
		}
	}
	return c.loadMetricsSecrets()
}

// readSecret takes a file's content without its final newline, which
// editors and `echo` add but nobody means as part of a password.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read password file: %w", err)
	}
	s := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if s == "" {
		return "", fmt.Errorf("password file %s is empty", path)
	}
	return s, nil
}

func (c Config) validateClients() error {
	if c.MaxClients < 1 {
		return fmt.Errorf("maxclients %d: must be at least 1", c.MaxClients)
	}
	if c.AuthTimeout < Duration(time.Second) {
		return fmt.Errorf("auth_timeout %s: must be at least 1s", time.Duration(c.AuthTimeout))
	}
	if c.MultiMaxCommands < 1 || c.MultiMaxBytes < 1 {
		return errors.New("multi_max_commands and multi_max_bytes must be positive")
	}
	if c.MaxMemoryUnauthClients < 256<<10 {
		return fmt.Errorf("maxmemory_unauthenticated_clients %d: must be at least 256KiB (one unauthenticated client may hold 160KiB)", c.MaxMemoryUnauthClients)
	}
	_, _, err := c.fanoutUsers()
	return err
}

// fanoutUsers is the users list with requirepass as the default user's
// password, with the admin role, so setups from before users keep working,
// and the RDB format of each user that names one.
func (c Config) fanoutUsers() ([]fanout.User, map[string]rdbconvert.Format, error) {
	var out []fanout.User
	seen, formats := map[string]bool{}, map[string]rdbconvert.Format{}
	if c.RequirePass != "" {
		out = append(out, fanout.User{Name: fanout.DefaultUser, PassHash: sha256.Sum256([]byte(c.RequirePass)), Role: fanout.RoleAdmin})
		seen[fanout.DefaultUser] = true
	}
	for i, u := range c.Users {
		where := fmt.Sprintf("users[%d]", i)
		if u.Name == "" || strings.ContainsAny(u.Name, " \t\r\n") {
			return nil, nil, fmt.Errorf("%s: name %q: want a non-empty name without blanks", where, u.Name)
		}
		if seen[u.Name] {
			return nil, nil, fmt.Errorf("%s: user %q is defined twice (requirepass defines %q)", where, u.Name, fanout.DefaultUser)
		}
		seen[u.Name] = true
		role := fanout.Role(u.Role)
		if !role.Valid() {
			return nil, nil, fmt.Errorf("%s (%s): role %q: want replica, monitor, proxy or admin", where, u.Name, u.Role)
		}
		hash, err := passwordHash(u.Password)
		if err != nil {
			return nil, nil, fmt.Errorf("%s (%s): %w", where, u.Name, err)
		}
		f, err := rdbconvert.ParseFormat(u.RDBFormat)
		if err != nil {
			return nil, nil, fmt.Errorf("%s (%s): rdb_format: %w", where, u.Name, err)
		}
		if !f.IsZero() {
			formats[u.Name] = f
		}
		out = append(out, fanout.User{Name: u.Name, PassHash: hash, Role: role})
	}
	return out, formats, nil
}

// passwordHash takes a password, or "#" and its SHA-256 in hex.
func passwordHash(pw string) ([sha256.Size]byte, error) {
	var h [sha256.Size]byte
	if pw == "" {
		return h, errors.New("password (or password_file) is required")
	}
	if !strings.HasPrefix(pw, "#") {
		return sha256.Sum256([]byte(pw)), nil
	}
	b, err := hex.DecodeString(pw[1:])
	if err != nil || len(b) != sha256.Size {
		return h, errors.New(`a password starting with "#" must be "#" and 64 hex digits, its SHA-256`)
	}
	copy(h[:], b)
	return h, nil
}
