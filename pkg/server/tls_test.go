package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/levyhq/levy/pkg/await"
	"github.com/levyhq/levy/pkg/config"
)

type pki struct {
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	caPool *x509.CertPool
	dir    string
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "levy test CA"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	p := &pki{ca: ca, caKey: key, caPool: x509.NewCertPool(), dir: t.TempDir()}
	p.caPool.AddCert(ca)
	p.write(t, "ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue signs a certificate for 127.0.0.1 and returns it and its files.
func (p *pki) issue(t *testing.T, name string, serial int64) (tls.Certificate, string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile := p.write(t, name+".pem", "CERTIFICATE", der)
	keyFile := p.write(t, name+"-key.pem", "EC PRIVATE KEY", kder)
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return cert, certFile, keyFile
}

// With listen.tls and a client CA, both listeners speak TLS; gRPC answers
// only clients with a certificate from that CA.
func TestMutualTLSOnBothListeners(t *testing.T) {
	p := newPKI(t)
	_, certFile, keyFile := p.issue(t, "levy", 2)
	client, _, _ := p.issue(t, "envoy", 3)
	cfg, err := config.Parse([]byte("plans: {free: {model: tiered}}\n"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Source = ""
	cfg.Listen = config.Listen{GRPC: "127.0.0.1:0", HTTP: "127.0.0.1:0",
		TLS: config.TLS{CertFile: certFile, KeyFile: keyFile, ClientCAFile: filepath.Join(p.dir, "ca.pem")}}
	cfg.Store.DataDir = t.TempDir()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	srv := runServer(t, cfg, Options{Log: zaptest.NewLogger(t)})

	healthy := func(certs []tls.Certificate) error {
		creds := credentials.NewTLS(&tls.Config{RootCAs: p.caPool, Certificates: certs})
		conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(creds))
		if err != nil {
			return err
		}
		defer conn.Close()
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer ccancel()
		_, err = healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(false))
		return err
	}
	await.NoError(t, 10*time.Second, func() error { return healthy([]tls.Certificate{client}) }, "gRPC over mTLS")
	if err := healthy(nil); err == nil {
		t.Fatal("a client without a certificate got an answer")
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.caPool, Certificates: []tls.Certificate{client}}}}
	resp, err := hc.Get("https://" + srv.HTTPAddr() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HTTPS /healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	hc.CloseIdleConnections()
	// Probes and Stripe present no client certificate: HTTPS still answers.
	bare := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.caPool}}}
	resp, err = bare.Get("https://" + srv.HTTPAddr() + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("HTTPS /healthz without a client certificate: %v %v", resp, err)
	}
	resp.Body.Close()
	bare.CloseIdleConnections()
}

func TestBadTLSFilesAreAConfigError(t *testing.T) {
	cfg, _ := config.Parse([]byte("listen: {tls: {cert_file: /nonexistent.pem}}\nplans: {free: {model: tiered}}\n"), "t.yaml")
	if err := cfg.Validate(); err == nil {
		t.Fatal("a cert without a key validated")
	}
}

// A certificate renewed in place (cert-manager writes the new pair over
// the old files) is served from the next handshakes on, on both
// listeners, without a restart (issue 11, item 7).
func TestRenewedCertificateIsServedWithoutARestart(t *testing.T) {
	p := newPKI(t)
	_, certFile, keyFile := p.issue(t, "levy", 10)
	client, _, _ := p.issue(t, "envoy", 11)
	cfg := testConfig(t, "plans: {free: {model: tiered}}\n")
	cfg.Listen.TLS = config.TLS{CertFile: certFile, KeyFile: keyFile, ClientCAFile: filepath.Join(p.dir, "ca.pem")}
	srv := runServer(t, cfg, Options{Log: zaptest.NewLogger(t)})

	serial := func(addr string) int64 {
		t.Helper()
		var conn *tls.Conn
		await.NoError(t, 5*time.Second, func() error {
			var err error
			conn, err = tls.Dial("tcp", addr, &tls.Config{RootCAs: p.caPool, Certificates: []tls.Certificate{client}})
			return err
		}, "a TLS connection to "+addr)
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
	}
	for _, addr := range []string{srv.GRPCAddr(), srv.HTTPAddr()} {
		if got := serial(addr); got != 10 {
			t.Fatalf("%s serves serial %d, want 10", addr, got)
		}
	}
	// The renewal: new pair, same file names.
	_, renewedCert, renewedKey := p.issue(t, "levy-renewed", 12)
	for from, to := range map[string]string{renewedCert: certFile, renewedKey: keyFile} {
		if err := os.Rename(from, to); err != nil {
			t.Fatal(err)
		}
	}
	for _, addr := range []string{srv.GRPCAddr(), srv.HTTPAddr()} {
		await.Until(t, 5*time.Second, func() bool { return serial(addr) == 12 }, addr+" to serve the renewed certificate")
	}
}
