package converter

import (
	"strings"
	"testing"
)

func TestParseSource(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want source
		err  string
	}{
		{in: "ubuntu", want: source{ref: "ubuntu"}},
		{in: "ubuntu:latest", want: source{ref: "ubuntu:latest"}},
		{in: "127.0.0.1:5000/app:1", want: source{ref: "127.0.0.1:5000/app:1"}},
		{in: "localhost:5000/app", want: source{ref: "localhost:5000/app"}},
		{in: "docker://ubuntu:24.04", want: source{transport: "docker", ref: "ubuntu:24.04"}},
		{in: "docker-daemon:app:1", want: source{transport: "docker-daemon", ref: "app:1"}},
		{in: "docker-archive:/tmp/a.tar", want: source{transport: "docker-archive", ref: "/tmp/a.tar"}},
		{in: "docker-archive:/tmp/a.tar:app:1", want: source{transport: "docker-archive", ref: "/tmp/a.tar", tag: "app:1"}},
		{in: "oci:/tmp/layout:v1", want: source{transport: "oci", ref: "/tmp/layout", tag: "v1"}},
		{in: "dir:/srv/rootfs", want: source{transport: "dir", ref: "/srv/rootfs", dir: "/srv/rootfs"}},
		{in: "oci-archive:/tmp/a.tar", err: "not supported"},
		{in: "docker-deamon:app:1", err: "neither an image reference"},
		{in: "UPPER:case", err: "neither an image reference"},
		{in: "docker-daemon:", err: "nothing after the transport"},
	} {
		got, err := parseSource(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.in) {
				t.Errorf("parseSource(%q) = %+v, %v; want an error naming it and saying %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseSource(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}
