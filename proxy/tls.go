package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync/atomic"
)

// TLSConfig secures either side of the proxy, the way Redis' tls-* options
// do: one certificate, served downstream and presented upstream as the
// client certificate (Redis requires one by default, tls-auth-clients yes).
// The files are read again on SIGHUP, so renewed certificates apply to new
// connections without a restart.
type TLSConfig struct {
	Cert     string `yaml:"cert"`
	Key      string `yaml:"key"`
	CA       string `yaml:"ca"`       // verifies the master's certificate, and clients'
	Listen   bool   `yaml:"listen"`   // serve the downstream port with TLS
	Upstream bool   `yaml:"upstream"` // connect to the master with TLS (its tls-port)
	// AuthClients is Redis' tls-auth-clients: yes (the default) requires a
	// client certificate signed by tls.ca, optional checks one if sent, no
	// asks for none.
	AuthClients string `yaml:"auth_clients"`
	ServerName  string `yaml:"server_name"` // expected name in the master's certificate (default: its host)
}

// clientAuth maps auth_clients to Go's setting; "" is the default, yes.
func (c TLSConfig) clientAuth() (tls.ClientAuthType, error) {
	switch strings.ToLower(c.AuthClients) {
	case "", "yes", "true":
		return tls.RequireAndVerifyClientCert, nil
	case "optional":
		return tls.VerifyClientCertIfGiven, nil
	case "no", "false":
		return tls.NoClientCert, nil
	}
	return 0, fmt.Errorf("tls.auth_clients %q: want yes, optional or no", c.AuthClients)
}

func (c TLSConfig) validate() error {
	mode, err := c.clientAuth()
	if err != nil {
		return err
	}
	if !c.Listen && !c.Upstream {
		return nil
	}
	if c.Listen && (c.Cert == "" || c.Key == "") {
		return errors.New("tls.listen needs tls.cert and tls.key")
	}
	if c.Listen && mode != tls.NoClientCert && c.CA == "" {
		return errors.New("tls.listen with tls.auth_clients yes (the default, as in Redis) or optional needs tls.ca to verify client certificates; or set auth_clients: no")
	}
	if c.Upstream && c.CA == "" {
		return errors.New("tls.upstream needs tls.ca to verify the master's certificate")
	}
	return nil
}

func (c TLSConfig) certificates() ([]tls.Certificate, error) {
	if c.Cert == "" {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.Cert, c.Key)
	if err != nil {
		return nil, fmt.Errorf("load tls.cert %s / tls.key %s: %w", c.Cert, c.Key, err)
	}
	return []tls.Certificate{cert}, nil
}

func (c TLSConfig) pool() (*x509.CertPool, error) {
	pem, err := os.ReadFile(c.CA)
	if err != nil {
		return nil, fmt.Errorf("read tls.ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls.ca %s holds no PEM certificate", c.CA)
	}
	return pool, nil
}

// serverConfig is for the downstream listener.
func (c TLSConfig) serverConfig() (*tls.Config, error) {
	certs, err := c.certificates()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: certs, MinVersion: tls.VersionTLS12}
	if cfg.ClientAuth, err = c.clientAuth(); err != nil {
		return nil, err
	}
	if cfg.ClientAuth != tls.NoClientCert {
		if cfg.ClientCAs, err = c.pool(); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// serverTLS serves the downstream port with the certificate and CA last
// loaded: each handshake takes the current set, so a reload needs no
// restart and leaves established connections alone.
type serverTLS struct {
	cur atomic.Pointer[tls.Config]
}

func newServerTLS(c TLSConfig) (*serverTLS, error) {
	s := &serverTLS{}
	return s, s.reload(c)
}

// reload reads the files again; on error the previous set stays.
func (s *serverTLS) reload(c TLSConfig) error {
	cfg, err := c.serverConfig()
	if err != nil {
		return err
	}
	s.cur.Store(cfg)
	return nil
}

func (s *serverTLS) config() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return s.cur.Load(), nil },
	}
}

// clientConfig is for the link to a master at addr.
func (c TLSConfig) clientConfig(addr string) (*tls.Config, error) {
	certs, err := c.certificates()
	if err != nil {
		return nil, err
	}
	roots, err := c.pool()
	if err != nil {
		return nil, err
	}
	name := c.ServerName
	if name == "" {
		name, _, _ = net.SplitHostPort(addr)
	}
	return &tls.Config{Certificates: certs, RootCAs: roots, ServerName: name, MinVersion: tls.VersionTLS12}, nil
}
