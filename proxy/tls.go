package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
)

// TLSConfig secures either side of the proxy, the way Redis' tls-* options
// do: one certificate, served downstream and presented upstream as the
// client certificate (Redis requires one by default, tls-auth-clients yes).
type TLSConfig struct {
	Cert        string `yaml:"cert"`
	Key         string `yaml:"key"`
	CA          string `yaml:"ca"`           // verifies the master's certificate, and clients' with auth_clients
	Listen      bool   `yaml:"listen"`       // serve the downstream port with TLS
	Upstream    bool   `yaml:"upstream"`     // connect to the master with TLS (its tls-port)
	AuthClients bool   `yaml:"auth_clients"` // require client certificates downstream
	ServerName  string `yaml:"server_name"`  // expected name in the master's certificate (default: its host)
}

func (c TLSConfig) validate() error {
	if !c.Listen && !c.Upstream {
		return nil
	}
	if c.Listen && (c.Cert == "" || c.Key == "") {
		return errors.New("tls.listen needs tls.cert and tls.key")
	}
	if c.AuthClients && c.CA == "" {
		return errors.New("tls.auth_clients needs tls.ca to verify client certificates")
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
	if c.AuthClients {
		if cfg.ClientCAs, err = c.pool(); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
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
