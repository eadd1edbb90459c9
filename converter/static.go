package converter

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/mkbootfs/mkbootfs/execdeps"
	"github.com/mkbootfs/mkbootfs/profile"
)

// staticProfile is a profile of what starting the image's command reads,
// found in the tree without running it (package execdeps): the program,
// its interpreters, its loader and shared libraries, each whole. It is
// nil when the config names no command; err says why it is nil or stops
// short (the command is not in the tree, the search met its bounds).
func staticProfile(t *tree, cfg *v1.ConfigFile) (*profile.Profile, error) {
	if cfg == nil {
		return nil, nil
	}
	argv := append(append([]string{}, cfg.Config.Entrypoint...), cfg.Config.Cmd...)
	if len(argv) == 0 {
		return nil, nil
	}
	files, err := execdeps.Files(treeFS{t}, argv, execdeps.Options{Env: cfg.Config.Env, WorkDir: cfg.Config.WorkingDir})
	p := &profile.Profile{Static: true}
	for _, f := range files {
		n := t.lookup(f[1:])
		if n == nil || !n.ino.meta.IsRegular() || n.ino.meta.Size == 0 {
			continue
		}
		p.Files = append(p.Files, profile.File{Path: f, Ranges: []profile.Range{{Off: 0, Len: n.ino.meta.Size}}})
	}
	if len(p.Files) == 0 {
		return nil, err
	}
	return p, err
}
