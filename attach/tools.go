package attach

import (
	"context"
	"fmt"
	"strings"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/index"
)

// defaultPath is PATH in a tools tree whose image sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Tools is the tree a session sees as its root.
type Tools struct {
	Source string       // what it was loaded from
	Index  *index.Index // nil: the host's root
	Stores []string     // where its chunks are, as recorded at conversion
	Path   string       // PATH in the tree
}

// LoadTools loads the tools tree named by ref: an index file, or a boot
// image made by `mkbootfs convert` (see bootimage.Read). Only the boot
// image's small layer is read: the index and the boot config. An empty ref
// is the host's root.
func LoadTools(ctx context.Context, ref string) (*Tools, error) {
	if ref == "" {
		return &Tools{Source: "the host's root", Path: defaultPath}, nil
	}
	b, err := bootimage.Read(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("tools: %w", err)
	}
	t := &Tools{Source: ref, Index: b.Index, Stores: b.Stores, Path: defaultPath}
	if b.Config != nil {
		for _, e := range b.Config.Config.Env {
			if p, ok := strings.CutPrefix(e, "PATH="); ok && p != "" {
				t.Path = p
			}
		}
	}
	return t, nil
}
