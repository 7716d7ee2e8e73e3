package proxy_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/replproxy/replproxy/internal/redisproc"
)

type testPKI struct{ ca, cert, key string }

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
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	p := testPKI{ca: filepath.Join(dir, "ca.crt"), cert: filepath.Join(dir, "redis.crt"), key: filepath.Join(dir, "redis.key")}
	write := func(path, typ string, der []byte) {
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(p.ca, "CERTIFICATE", caDER)
	write(p.cert, "CERTIFICATE", der)
	write(p.key, "EC PRIVATE KEY", keyDER)
	return p
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
