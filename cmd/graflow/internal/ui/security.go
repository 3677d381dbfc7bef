package ui

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
)

// ErrNotLoopback is returned by CheckAddr for an address that would serve
// the dashboard beyond this machine.
var ErrNotLoopback = errors.New("not a loopback address")

// CheckAddr checks a listen address ("host:port"). Unless allowRemote, the
// host must be loopback: "localhost", 127.0.0.0/8 or ::1. An empty host
// (":8080") listens on every interface and is refused too.
func CheckAddr(addr string, allowRemote bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w (want host:port, e.g. 127.0.0.1:8080)", addr, err)
	}
	if allowRemote || loopbackHost(host) {
		return nil
	}
	where := strconv.Quote(host)
	if host == "" {
		where = "every interface"
	}
	return fmt.Errorf("listen address %q: %w: the dashboard has no authentication and can requeue dead letters; "+
		"use 127.0.0.1:PORT (reach it remotely through an SSH tunnel), or pass --allow-remote to serve it on %s anyway", addr, ErrNotLoopback, where)
}

// loopbackHost reports whether host (no port) names this machine only.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// contentSecurityPolicy allows the page's own script, style sheet, images
// and event stream, and nothing else: no inline script or style, no other
// origin, no framing, forms posting only back here.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// secure wraps the dashboard's handler: it refuses requests for a
// non-loopback Host unless AllowAnyHost (DNS rebinding), sets the security
// headers on every response, and refuses cross-origin state-changing
// requests (http.CrossOriginProtection: Sec-Fetch-Site, then Origin).
func (s *Server) secure(h http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "cross-origin request refused: use the dashboard's own page", http.StatusForbidden)
	}))
	h = cop.Handler(h)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", contentSecurityPolicy)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cross-Origin-Opener-Policy", "same-origin")
		if !s.cfg.AllowAnyHost && !loopbackHost(hostOnly(r.Host)) {
			http.Error(w, fmt.Sprintf("host %q refused: the dashboard answers loopback names only (graflow ui --allow-remote lifts this)", r.Host), http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// hostOnly strips the port from a Host header.
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

// CSRF: a signed double-submit token. The cookie holds a random nonce; the
// form carries HMAC(key, nonce) with a key only this process knows. A page
// on another origin can neither read the form's token nor, even if it can
// set a cookie for this host (any other port of localhost can), compute
// the token that goes with its cookie.
const (
	csrfCookie = "graflow_csrf"
	csrfField  = "csrf"
)

// csrfToken returns the token for this browser's forms, setting the nonce
// cookie first if the request has none.
func (s *Server) csrfToken(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) >= 32 {
		return s.sign(c.Value)
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	nonce := base64.RawURLEncoding.EncodeToString(b)
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: nonce, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	return s.sign(nonce)
}

func (s *Server) sign(nonce string) string {
	m := hmac.New(sha256.New, s.csrfKey)
	m.Write([]byte(nonce))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// requireCSRF refuses, with 403, a request whose form token does not match
// its cookie.
func (s *Server) requireCSRF(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		c, err := r.Cookie(csrfCookie)
		if err != nil || len(c.Value) < 32 {
			http.Error(w, "missing CSRF cookie: reload the dashboard page and submit its form again", http.StatusForbidden)
			return
		}
		got := r.PostFormValue(csrfField)
		if got == "" || !hmac.Equal([]byte(got), []byte(s.sign(c.Value))) {
			http.Error(w, "invalid CSRF token: reload the dashboard page and submit its form again", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}
