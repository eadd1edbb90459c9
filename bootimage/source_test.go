package bootimage

import (
	"strings"
	"testing"
)

func TestParseSource(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Source
		err  string
	}{
		{in: "ubuntu", want: Source{Ref: "ubuntu"}},
		{in: "ubuntu:latest", want: Source{Ref: "ubuntu:latest"}},
		{in: "127.0.0.1:5000/app:1", want: Source{Ref: "127.0.0.1:5000/app:1"}},
		{in: "localhost:5000/app", want: Source{Ref: "localhost:5000/app"}},
		{in: "docker://ubuntu:24.04", want: Source{Transport: "docker", Ref: "ubuntu:24.04"}},
		{in: "docker-daemon:app:1", want: Source{Transport: "docker-daemon", Ref: "app:1"}},
		{in: "docker-archive:/tmp/a.tar", want: Source{Transport: "docker-archive", Ref: "/tmp/a.tar"}},
		{in: "docker-archive:/tmp/a.tar:app:1", want: Source{Transport: "docker-archive", Ref: "/tmp/a.tar", Tag: "app:1"}},
		{in: "oci:/tmp/layout:v1", want: Source{Transport: "oci", Ref: "/tmp/layout", Tag: "v1"}},
		{in: "dir:/srv/rootfs", want: Source{Transport: "dir", Ref: "/srv/rootfs", Dir: "/srv/rootfs"}},
		{in: "oci-archive:/tmp/a.tar", err: "not supported"},
		{in: "docker-deamon:app:1", err: "neither an image reference"},
		{in: "UPPER:case", err: "neither an image reference"},
		{in: "docker-daemon:", err: "nothing after the transport"},
	} {
		got, err := ParseSource(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.in) {
				t.Errorf("ParseSource(%q) = %+v, %v; want an error naming it and saying %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSource(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}
