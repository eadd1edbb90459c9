package xattrs

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
)

func TestRead(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(p, "user.b", []byte("two"), 0); errors.Is(err, unix.ENOTSUP) {
		t.Fatalf("%s: the test's file system has no user xattrs: %v", p, err)
	} else if err != nil {
		t.Fatal(err)
	}
	if err := unix.Lsetxattr(p, "user.a", nil, 0); err != nil {
		t.Fatal(err)
	}
	got, err := Read(p)
	want := []index.Xattr{{Name: "user.a", Value: []byte{}}, {Name: "user.b", Value: []byte("two")}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Read: %q, %v; want %q", got, err, want)
	}
	// A symlink's own attributes, not its target's.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	if got, err := Read(link); err != nil || len(got) != 0 {
		t.Errorf("Read of a symlink: %q, %v; want none", got, err)
	}
}
