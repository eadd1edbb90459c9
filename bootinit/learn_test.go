package bootinit

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/nodecache"
	"github.com/mkbootfs/mkbootfs/profile"
)

func TestLearnTime(t *testing.T) {
	for v, want := range map[string]time.Duration{"": learnFor, "on": learnFor, "off": 0, "90s": 90 * time.Second, "10m": maxLearnFor} {
		t.Setenv(bootconfig.EnvLearn, v)
		if d, err := learnTime(); d != want || err != nil {
			t.Errorf("%s=%q: %v, %v; want %v", bootconfig.EnvLearn, v, d, err, want)
		}
	}
	for _, v := range []string{"yes", "0s", "-5s", "11m", "1"} {
		t.Setenv(bootconfig.EnvLearn, v)
		if _, err := learnTime(); err == nil || !strings.Contains(err.Error(), "want on (the default") {
			t.Errorf("%s=%q: %v, want it refused", bootconfig.EnvLearn, v, err)
		}
	}
}

// TestLearnedProfile: what a learner keeps reads back; a profile file that
// is not one the image's learner could have written is refused.
func TestLearnedProfile(t *testing.T) {
	x, _, entries := treeSource(t)
	cache := t.TempDir()
	dir := filepath.Join(cache, "profiles")
	path := nodecache.ProfilePath(cache, "name")
	newLearner := func() *learner {
		return &learner{rec: profile.NewRecorder(x, learnLimits), cache: cache, name: "name", source: "example.com/app:1", log: log.New(io.Discard, "", 0), timer: time.NewTimer(time.Hour)}
	}
	l := newLearner()
	l.stop() // nothing read: nothing kept
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a learner that saw no read made %s: %v", dir, err)
	}

	l = newLearner()
	for _, e := range entries {
		l.rec.Read(x.Entries[e].Inode, e, 0, 3)
	}
	l.finish() // learnFor passed
	l.rec.Read(x.Entries[entries[0]].Inode, entries[0], 5, 1)
	l.stop() // the app exits: kept already
	p, text, err := readLearned(path, x)
	if err != nil || len(p.Files) != 2 || p.Files[0].Path != "/usr/bin/app" || len(p.Files[0].Ranges) != 1 || !strings.HasPrefix(string(text), "mkbootfs profile 1\n") {
		t.Fatalf("read back: %+v, %q, %v", p, text, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("profiles/ holds %v: a temporary file is left", ents)
	}
	if u, err := nodecache.Du(context.Background(), cache); err != nil || len(u.Profiles) != 1 || u.Profiles[0].Name != "name" || u.Profiles[0].Source != "example.com/app:1" {
		t.Errorf("du: %+v, %v; want the profile learned from example.com/app:1", u, err)
	}

	if _, _, err := readLearned(filepath.Join(dir, "none"), x); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("no profile: %v", err)
	}
	for _, tc := range []struct {
		name, text string
		want       string
	}{
		{"empty", "", "is empty"},
		{"no file", "mkbootfs profile 1\n", "names no file"},
		{"static", "mkbootfs profile 1 static\n\"/usr/bin/app\" 0+1\n", "a static profile"},
		{"outside", "mkbootfs profile 1\n\"/../../etc/shadow\" 0+1\n", "not a path in the image"},
		{"not in the image", "mkbootfs profile 1\n\"/usr/bin/other\" 0+1\n", "is not in the image"},
		{"directory", "mkbootfs profile 1\n\"/usr/bin\" 0+1\n", "is not a regular file"},
		{"past the end", "mkbootfs profile 1\n\"/usr/lib/libx.so\" 0+4\n", "past its end"},
		{"huge", "mkbootfs profile 1\n\"/usr/lib/libx.so\" 0+4611686018427387903\n", "ranges of more than"},
		{"too long", "mkbootfs profile 1\n" + strings.Repeat("\n", int(learnLimits.Size)), "longer than"},
	} {
		p := filepath.Join(dir, tc.name)
		os.WriteFile(p, []byte(tc.text), 0o644)
		if _, _, err := readLearned(p, x); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "profile "+p) {
			t.Errorf("%s: %v, want an error naming %s with %q", tc.name, err, p, tc.want)
		}
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	os.Symlink(path, link)
	for p, want := range map[string]string{fifo: "not a regular file", link: "too many levels of symbolic links", dir: "not a regular file"} {
		if _, _, err := readLearned(p, x); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", p, err, want)
		}
	}
}
