// Package transport is the HTTP transport the stores that speak HTTP share:
// kept-alive connections for parallel chunk fetches, bounded dials.
package transport

import (
	"crypto/tls"
	"net"
	"net/http"
	"time"
)

// New returns a transport that keeps parallelism connections per host
// alive; timeout bounds the dial and the TLS handshake (at most 30s).
func New(timeout time.Duration, parallelism int, tlsConfig *tls.Config) *http.Transport {
	dialer := &net.Dialer{Timeout: min(timeout, 30*time.Second), KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSClientConfig:       tlsConfig,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   parallelism,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   min(timeout, 30*time.Second),
		ExpectContinueTimeout: time.Second,
		// Chunks are zstd already: gzip on top costs the server CPU for nothing.
		DisableCompression: true,
	}
}

// FreshBodies returns rt sending each request with a body of its own from
// GetBody (http.NewRequest sets it for in-memory bodies). A RoundTripper
// above it that resends a request after an auth challenge, as
// go-containerregistry's bearer transport does, would otherwise send the
// body the first attempt is still writing: a data race, and an empty body.
func FreshBodies(rt http.RoundTripper) http.RoundTripper {
	return freshBodies{rt}
}

type freshBodies struct{ rt http.RoundTripper }

func (f freshBodies) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body == nil || req.Body == http.NoBody || req.GetBody == nil {
		return f.rt.RoundTrip(req)
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, err
	}
	r := req.Clone(req.Context())
	r.Body = body
	return f.rt.RoundTrip(r)
}
