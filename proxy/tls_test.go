package proxy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

type testPKI struct {
	ca, cert, key string
	caCert        *x509.Certificate
	caKey         *ecdsa.PrivateKey
}

// makePKI writes a CA and one certificate for 127.0.0.1, good for serving
// and as a client certificate, as Redis' own test suite does.
func makePKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "replproxy test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	p := testPKI{ca: filepath.Join(dir, "ca.crt"), cert: filepath.Join(dir, "redis.crt"), key: filepath.Join(dir, "redis.key"), caCert: caCert, caKey: caKey}
	writePEM(t, p.ca, "CERTIFICATE", caDER)
	p.issue(t, 2)
	return p
}

// issue writes a new certificate and key, signed by the CA, over the old.
func (p testPKI) issue(t *testing.T, serial int64) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	writePEM(t, p.cert, "CERTIFICATE", der)
	writePEM(t, p.key, "EC PRIVATE KEY", keyDER)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (p testPKI) redisArgs() []string {
	return []string{"--tls-cert-file", p.cert, "--tls-key-file", p.key, "--tls-ca-cert-file", p.ca}
}

// Issue 5, point 4: the relay works with TLS on both sides of the proxy:
// to the master's own TLS port, and for replicas with tls-replication.
func TestTLSBothSides(t *testing.T) {
	t.Parallel()
	pki := makePKI(t)
	tlsPort := redisproc.FreePort(t)
	m := redisproc.Start(t, append(append(masterArgs, "--tls-port", strconv.Itoa(tlsPort)), pki.redisArgs()...)...)
	cfg := proxyConfig(t, "127.0.0.1:"+strconv.Itoa(tlsPort))
	cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA = pki.cert, pki.key, pki.ca
	cfg.TLS.Listen, cfg.TLS.Upstream = true, true
	r := &relay{master: m, proxy: startProxy(t, cfg)}
	for i := 0; i < 2; i++ {
		s := redisproc.Start(t, append(pki.redisArgs(), "--tls-replication", "yes",
			"--replicaof", "127.0.0.1", strconv.Itoa(r.proxy.port))...)
		r.replicas = append(r.replicas, s)
	}
	stopLoad := runLoad(t, m, 51)
	waitOps(t, m, 2000)
	stopLoad()
	r.waitInSync(t)
	expectInt(t, "master connected_slaves", m.InfoInt("replication", "connected_slaves"), 1)

	// The downstream port speaks only TLS: a plain client gets nowhere.
	w, err := dialWire(cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if got, err := w.do("PING"); err == nil && got == "+PONG" {
		t.Fatal("a plain-text PING was answered on the TLS port")
	}
}

// Issue 10: client certificates are required by default downstream, as
// Redis' tls-auth-clients yes; a renewed certificate is served after SIGHUP
// without a restart.
func TestTLSClientCertsByDefaultAndReloadOnSIGHUP(t *testing.T) {
	t.Parallel()
	pki := makePKI(t)
	m := redisproc.Start(t)
	cfg := proxyConfig(t, m.Addr())
	cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA = pki.cert, pki.key, pki.ca
	cfg.TLS.Listen = true // auth_clients left to its default
	tp := newProcessProxy(t, cfg)
	pool := x509.NewCertPool()
	pool.AddCert(pki.caCert)

	// ping returns the serial of the certificate served, or an error.
	ping := func(withCert bool) (int64, error) {
		tc := &tls.Config{RootCAs: pool}
		if withCert {
			cert, err := tls.LoadX509KeyPair(pki.cert, pki.key)
			if err != nil {
				return 0, err
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", cfg.Listen, tc)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		got, err := roundTrip(c, "PING")
		if err != nil || got != "+PONG" {
			return 0, fmt.Errorf("PING: %q %v", got, err)
		}
		return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64(), nil
	}
	if _, err := ping(false); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	if serial, err := ping(true); err != nil || serial != 2 {
		t.Fatalf("with a certificate: serial %d, %v", serial, err)
	}
	pki.issue(t, 3)
	tp.cmd.Process.Signal(syscall.SIGHUP)
	redisproc.Eventually(t, 10*time.Second, "the renewed certificate to be served", func() (bool, string) {
		serial, err := ping(true)
		return serial == 3, fmt.Sprint(serial, err)
	})
}
