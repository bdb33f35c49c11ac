// Package tlsfiles builds TLS configurations from PEM files that are read again when they change on disk, so
// certificates can be renewed (cert-manager, a rotation job) without restarting the process: the next
// handshake after a change uses the new files.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// recheck bounds how often the files' modification times are looked at.
const recheck = time.Second

// files is a set of PEM files loaded together, reloaded when any of them changes.
type files struct {
	paths []string
	load  func() (any, error)

	mu      sync.Mutex
	checked time.Time
	mtimes  []time.Time
	value   any
}

func newFiles(load func() (any, error), paths ...string) (*files, error) {
	f := &files{paths: paths, load: load}
	if _, err := f.get(); err != nil {
		return nil, err
	}
	return f, nil
}

// get returns the loaded value, reloading it if a file changed since the last look (at most once per recheck).
// A reload that fails keeps the previous value, so a half-written renewal does not break handshakes.
func (f *files) get() (any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if f.value != nil && now.Sub(f.checked) < recheck {
		return f.value, nil
	}
	f.checked = now
	mtimes := make([]time.Time, len(f.paths))
	changed := f.value == nil
	for i, p := range f.paths {
		fi, err := os.Stat(p)
		if err != nil {
			if f.value != nil {
				return f.value, nil
			}
			return nil, err
		}
		mtimes[i] = fi.ModTime()
		if f.mtimes == nil || !mtimes[i].Equal(f.mtimes[i]) {
			changed = true
		}
	}
	if !changed {
		return f.value, nil
	}
	v, err := f.load()
	if err != nil {
		if f.value != nil {
			return f.value, nil
		}
		return nil, err
	}
	f.value, f.mtimes = v, mtimes
	return v, nil
}

func keyPair(certFile, keyFile string) (*files, error) {
	return newFiles(func() (any, error) {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load tls key pair: %w", err)
		}
		return &c, nil
	}, certFile, keyFile)
}

func certPool(paths ...string) (*files, error) {
	return newFiles(func() (any, error) {
		pool := x509.NewCertPool()
		for _, p := range paths {
			pem, err := os.ReadFile(p)
			if err != nil {
				return nil, err
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s: no PEM certificate", p)
			}
		}
		return pool, nil
	}, paths...)
}

// Server returns the configuration of a TLS server presenting certFile/keyFile. With clientCAFile set, a client
// may present a certificate, which must be signed by that CA ([tls.VerifyClientCertIfGiven]; what a verified
// certificate allows is decided by the caller, see [Verified]). Every file is reloaded when it changes.
func Server(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := keyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		c, err := cert.get()
		if err != nil {
			return nil, err
		}
		return c.(*tls.Certificate), nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}, GetCertificate: getCert}
	if clientCAFile == "" {
		return conf, nil
	}
	cas, err := certPool(clientCAFile)
	if err != nil {
		return nil, fmt.Errorf("client CA: %w", err)
	}
	// ClientCAs cannot be swapped on a shared config, so each handshake gets a config with the current pool.
	conf.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		pool, err := cas.get()
		if err != nil {
			return nil, err
		}
		return &tls.Config{
			MinVersion: tls.VersionTLS12, NextProtos: conf.NextProtos, GetCertificate: getCert,
			ClientCAs: pool.(*x509.CertPool), ClientAuth: tls.VerifyClientCertIfGiven,
		}, nil
	}
	return conf, nil
}

// Client returns the configuration of a TLS client trusting the CA certificates in rootFiles (none: the
// system's roots) and, with certFile/keyFile set, presenting that client certificate. Every file is reloaded
// when it changes.
func Client(rootFiles []string, certFile, keyFile string) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(rootFiles) > 0 {
		roots, err := certPool(rootFiles...)
		if err != nil {
			return nil, fmt.Errorf("tls roots: %w", err)
		}
		// Verify by hand against the current roots, since RootCAs cannot be swapped per connection.
		conf.InsecureSkipVerify = true // replaced by VerifyConnection below, which checks the chain and the name
		conf.VerifyConnection = func(cs tls.ConnectionState) error {
			pool, err := roots.get()
			if err != nil {
				return err
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err = cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: cs.ServerName, Roots: pool.(*x509.CertPool), Intermediates: inter})
			return err
		}
	}
	if certFile != "" || keyFile != "" {
		pair, err := keyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := pair.get()
			if err != nil {
				return nil, err
			}
			return c.(*tls.Certificate), nil
		}
	}
	return conf, nil
}

// Verified reports whether the connection state carries a client certificate that the server verified.
func Verified(cs *tls.ConnectionState) bool {
	return cs != nil && len(cs.VerifiedChains) > 0
}
