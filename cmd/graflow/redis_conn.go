package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"syscall"
)

// The parts of the connection constructor (common.connect) that need no
// Redis client: host:port, the --tls-* files, and what a failed PING means.

// withScheme accepts host:port (and host) as redis://host:port.
func withScheme(raw string) string {
	raw = strings.TrimSpace(raw)
	if raw == "" || strings.Contains(raw, "://") {
		return raw
	}
	return "redis://" + raw
}

// isNodeList reports whether raw (a URL with its scheme) lists several
// nodes: a comma in its host part. A comma in the userinfo (a password) or
// in the query does not count.
func isNodeList(raw string) bool {
	if !strings.Contains(raw, ",") {
		return false
	}
	u, err := url.Parse(raw)
	if err != nil {
		return true // let the list parser say what is wrong
	}
	return strings.Contains(u.Host, ",")
}

// tlsFiles are the --tls-ca, --tls-cert and --tls-key flags.
type tlsFiles struct{ ca, cert, key string }

// config loads the files; nil when none is given.
func (f tlsFiles) config() (*tls.Config, error) {
	if f.ca == "" && f.cert == "" {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", f.ca)
		}
		conf.RootCAs = pool
	}
	if f.cert != "" {
		cert, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}

// mergeTLS puts the flags' CA and certificate into the URL's TLS config
// (rediss:// sets ServerName), or turns TLS on for a redis:// URL.
func mergeTLS(url, flags *tls.Config, addr string) *tls.Config {
	if flags == nil {
		return url
	}
	if url == nil {
		url = &tls.Config{MinVersion: tls.VersionTLS12}
		if host, _, err := net.SplitHostPort(addr); err == nil {
			url.ServerName = host
		}
	}
	url.RootCAs = flags.RootCAs
	url.Certificates = flags.Certificates
	return url
}

// Connection failures, told apart so the message says what to fix.
var (
	errRedisAuth        = errors.New("redis refused the credentials")
	errRedisTLS         = errors.New("TLS with redis failed")
	errRedisUnreachable = errors.New("redis not reachable")
)

// connectError says why the PING to addr failed: the credentials, TLS, or
// nothing answering there. useTLS: the client speaks TLS (a plain server
// then never answers its handshake, so a timeout is a TLS failure).
func connectError(addr string, useTLS bool, err error) error {
	msg := err.Error()
	var (
		recordErr tls.RecordHeaderError
		verifyErr *tls.CertificateVerificationError
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		alertErr  tls.AlertError
	)
	switch {
	case strings.HasPrefix(msg, "WRONGPASS"), strings.HasPrefix(msg, "NOAUTH"), strings.Contains(msg, "invalid username-password"),
		strings.HasPrefix(msg, "NOPERM"):
		return withCode(ExitError, fmt.Errorf("%w at %s: %w: give user and password in the URL (redis://user:pass@host:port) or the password in $REDIS_PASSWORD", errRedisAuth, addr, err))
	case errors.As(err, &recordErr), errors.As(err, &verifyErr), errors.As(err, &unknownCA), errors.As(err, &hostErr),
		errors.As(err, &alertErr), strings.Contains(msg, "tls: "), strings.Contains(msg, "x509: "):
		return withCode(ExitError, fmt.Errorf("%w at %s: %w: check --tls-ca (the CA that signed the server's certificate) and the host name, or use redis:// if the server does not speak TLS", errRedisTLS, addr, err))
	case useTLS && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)):
		return withCode(ExitError, fmt.Errorf("%w at %s: no answer to the TLS handshake (%w): a server without TLS? use redis://", errRedisTLS, addr, err))
	case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
		return withCode(ExitError, fmt.Errorf("%w at %s: the server closed the connection (%w): a TLS-only server? use rediss://", errRedisUnreachable, addr, err))
	}
	return withCode(ExitError, fmt.Errorf("%w at %s: %w: start Redis, set REDIS_URL, or run \"graflow dev\"", errRedisUnreachable, addr, err))
}
