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
