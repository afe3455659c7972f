package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// ServerTLS builds the listeners' TLS config, or nil when TLS is off. The
// certificate, key and client CA are read again when their files change
// (cert-manager renews certificates in place), checked at most once a
// second, on a handshake; a pair that does not load keeps the one in
// force.
func (c *Config) ServerTLS() (*tls.Config, error) {
	t := c.Listen.TLS
	if t.CertFile == "" && t.KeyFile == "" && t.ClientCAFile == "" {
		return nil, nil
	}
	if t.CertFile == "" || t.KeyFile == "" {
		return nil, errors.New("cert_file and key_file go together")
	}
	f := &tlsFiles{tls: t, now: time.Now}
	if _, err := f.reload(); err != nil {
		return nil, err
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return f.current(), nil
	}}, nil
}

// tlsFiles is the TLS config read from files, and when it was.
type tlsFiles struct {
	tls TLS
	now func() time.Time

	mu      sync.Mutex
	cfg     *tls.Config
	stamp   string // the files' sizes and times when cfg was read
	checked time.Time
}

// current is the config in force, read again first when the files changed
// (looked at most once a second).
func (f *tlsFiles) current() *tls.Config {
	f.mu.Lock()
	defer f.mu.Unlock()
	if now := f.now(); now.Sub(f.checked) >= time.Second {
		f.checked = now
		if f.stampNow() != f.stamp {
			f.reloadLocked() // a bad pair keeps the one in force
		}
	}
	return f.cfg
}

func (f *tlsFiles) reload() (*tls.Config, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reloadLocked()
}

func (f *tlsFiles) reloadLocked() (*tls.Config, error) {
	stamp := f.stampNow()
	t := f.tls
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load certificate: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if t.ClientCAFile != "" {
		pem, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("client_ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client_ca_file %s: no PEM certificate", t.ClientCAFile)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	f.cfg, f.stamp = cfg, stamp
	return cfg, nil
}

// stampNow is the files' sizes and modification times (following symlinks,
// as a Kubernetes Secret mounts them).
func (f *tlsFiles) stampNow() string {
	var b strings.Builder
	for _, p := range []string{f.tls.CertFile, f.tls.KeyFile, f.tls.ClientCAFile} {
		if p == "" {
			continue
		}
		if st, err := os.Stat(p); err == nil {
			fmt.Fprintf(&b, "%s:%d:%d;", p, st.Size(), st.ModTime().UnixNano())
		} else {
			fmt.Fprintf(&b, "%s:missing;", p)
		}
	}
	return b.String()
}
