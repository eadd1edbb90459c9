package nodecache

import (
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	dir := t.TempDir()
	fs := filesystemSize(dir)
	for _, tc := range []struct {
		in   string
		want int64
		err  string
	}{
		{in: "30M", want: 30 << 20},
		{in: "30m", want: 30 << 20},
		{in: "30MB", want: 30 << 20},
		{in: "30MiB", want: 30 << 20},
		{in: "1.5G", want: 3 << 29},
		{in: "512k", want: 512 << 10},
		{in: "2T", want: 2 << 40},
		{in: "1000", want: 1000},
		{in: " 7 G ", want: 7 << 30},
		{in: "10%", want: fs / 10},
		{in: "", err: "want bytes"},
		{in: "abc", err: "want bytes"},
		{in: "-1M", err: "want bytes"},
		{in: "30X", err: "want bytes"},
		{in: "0%", err: "want bytes"},
		{in: "101%", err: "want bytes"},
		{in: "9999999T", err: "want bytes"},
	} {
		got, err := ParseSize(tc.in, dir)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseSize(%q) = %d, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseMaxAge(t *testing.T) {
	for in, want := range map[string]time.Duration{"72h": 72 * time.Hour, "90m": 90 * time.Minute, " 1h30m ": 90 * time.Minute, "1s": time.Second} {
		if got, err := ParseMaxAge(in); err != nil || got != want {
			t.Errorf("ParseMaxAge(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	// No days: Go's durations stop at hours.
	for _, in := range []string{"", "lots", "7d", "0", "0s", "-1h", "72"} {
		if got, err := ParseMaxAge(in); err == nil || !strings.Contains(err.Error(), "want a duration above 0") {
			t.Errorf("ParseMaxAge(%q) = %v, %v; want an error saying what to give", in, got, err)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{100: "100B", 1536: "1.5K", 30 << 20: "30M", 1 << 30: "1G", 20 << 30: "20G", 5<<40 + 1<<39: "5.5T"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestDefaultMaxSize(t *testing.T) {
	fs := filesystemSize(t.TempDir())
	got := DefaultMaxSize(t.TempDir())
	if got < min(defaultMin, fs/2) || got > defaultMax || got > fs {
		t.Errorf("DefaultMaxSize = %s on a filesystem of %s", FormatSize(got), FormatSize(fs))
	}
	t.Logf("DefaultMaxSize = %s on a filesystem of %s", FormatSize(got), FormatSize(fs))
}
