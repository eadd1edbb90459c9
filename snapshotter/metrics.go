package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// statsWait bounds how long a scrape waits for one mount process.
const statsWait = 2 * time.Second

// ServeMetrics serves the snapshotter's metrics, in Prometheus's text
// format, at /metrics on l until ctx ends.
func ServeMetrics(ctx context.Context, s *Snapshotter, l net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		s.WriteMetrics(r.Context(), w)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// WriteMetrics writes the counters of the node's mounts, summed by store:
// the mounts, the chunks and bytes each store sent and its fetch latency,
// the node cache's hits and misses, and the reads served. A mount that
// goes takes its counts with it, as a restarted process does.
func (s *Snapshotter) WriteMetrics(ctx context.Context, w io.Writer) {
	var (
		mounted          int
		reads, readBytes int64
		readErrs, hits   int64
		misses           int64
		stores           = map[string]*storeStats{}
	)
	add := func(ss storeStats) {
		sum := stores[ss.URL]
		if sum == nil {
			sum = &storeStats{URL: ss.URL, Seconds: make([]float64, len(latencyBuckets)+1)}
			stores[ss.URL] = sum
		}
		sum.add(ss)
	}
	for _, lm := range s.mounts.all() {
		st, err := lm.stats(ctx)
		if err != nil {
			continue
		}
		mounted++
		reads += st.Lazyfs.Reads
		readBytes += st.Lazyfs.ReadBytes
		readErrs += st.Lazyfs.ReadErrors
		if c := st.Lazyfs.Cache; c != nil {
			hits += c.Hits
			misses += c.Misses
		}
		for _, ss := range st.Stores {
			add(ss)
		}
	}
	s.mounts.mu.Lock()
	for _, ss := range s.mounts.earlyStores {
		add(*ss)
	}
	hits += s.mounts.earlyHits
	misses += s.mounts.earlyMisses
	s.mounts.mu.Unlock()
	const p = "mkbootfs_snapshotter_"
	metric := func(name, typ, help string, v int64) {
		fmt.Fprintf(w, "# HELP %s%s %s\n# TYPE %s%s %s\n%s%s %d\n", p, name, help, p, name, typ, p, name, v)
	}
	metric("mounts", "gauge", "Boot images mounted on the node.", int64(mounted))
	metric("reads_total", "counter", "Reads served by the mounts.", reads)
	metric("read_bytes_total", "counter", "Bytes the mounts' reads returned.", readBytes)
	metric("read_errors_total", "counter", "Reads failed with EIO (a chunk could not be fetched).", readErrs)
	metric("cache_hits_total", "counter", "Chunks found in the node cache.", hits)
	metric("cache_misses_total", "counter", "Chunks fetched from a store into the node cache.", misses)

	urls := make([]string, 0, len(stores))
	for u := range stores {
		urls = append(urls, u)
	}
	sort.Strings(urls)
	perStore := func(name, help string, v func(*storeStats) int64) {
		fmt.Fprintf(w, "# HELP %s%s %s\n# TYPE %s%s counter\n", p, name, help, p, name)
		for _, u := range urls {
			fmt.Fprintf(w, "%s%s{store=%s} %d\n", p, name, strconv.Quote(u), v(stores[u]))
		}
	}
	perStore("store_chunks_total", "Chunks fetched from a store.", func(s *storeStats) int64 { return s.Chunks })
	perStore("store_bytes_total", "Bytes fetched from a store, as it sent them (compressed).", func(s *storeStats) int64 { return s.Bytes })
	perStore("store_errors_total", "Chunk fetches from a store that failed.", func(s *storeStats) int64 { return s.Errors })
	fmt.Fprintf(w, "# HELP %sstore_fetch_seconds Time to fetch a chunk from a store.\n# TYPE %sstore_fetch_seconds histogram\n", p, p)
	for _, u := range urls {
		st, q := stores[u], strconv.Quote(u)
		var n float64
		for i, b := range latencyBuckets {
			n += st.Seconds[i]
			fmt.Fprintf(w, "%sstore_fetch_seconds_bucket{store=%s,le=%q} %g\n", p, q, strconv.FormatFloat(b, 'g', -1, 64), n)
		}
		n += st.Seconds[len(latencyBuckets)]
		fmt.Fprintf(w, "%sstore_fetch_seconds_bucket{store=%s,le=\"+Inf\"} %g\n", p, q, n)
		fmt.Fprintf(w, "%sstore_fetch_seconds_sum{store=%s} %g\n%sstore_fetch_seconds_count{store=%s} %g\n", p, q, st.Sum, p, q, n)
	}
}

// add adds the counts of ss to st.
func (st *storeStats) add(ss storeStats) {
	st.Chunks += ss.Chunks
	st.Bytes += ss.Bytes
	st.Errors += ss.Errors
	st.Sum += ss.Sum
	for i := range min(len(ss.Seconds), len(st.Seconds)) {
		st.Seconds[i] += ss.Seconds[i]
	}
}

// stats asks lm's mount process for its counters.
func (lm *lazyMount) stats(ctx context.Context) (*mountStats, error) {
	ctx, cancel := context.WithTimeout(ctx, statsWait)
	defer cancel()
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", lm.state(statsSocket))
	}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://mount/", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var st mountStats
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
		return nil, fmt.Errorf("%s: %w", strings.TrimSpace(lm.image), err)
	}
	return &st, nil
}
