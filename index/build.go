package index

import (
	"fmt"
	"sort"
)

// Node is a directory tree to build an index from: the root is a directory
// named "", and Inode indexes the inodes passed to Build.
type Node struct {
	Name     string
	Inode    uint32
	Children []*Node
}

// Build lays the tree out in breadth-first order with sorted children and
// checks it as Decode would.
func Build(root *Node, inodes []Inode, chunks []Chunk, meta map[string]string) (*Index, error) {
	x := &Index{Meta: meta, Chunks: chunks, Inodes: inodes}
	// Breadth-first: number each node as it is queued; children are queued
	// together, so they are contiguous.
	type item struct {
		n      *Node
		parent uint32
	}
	q := []item{{root, 0}}
	for i := 0; i < len(q); i++ {
		it := q[i]
		x.Entries = append(x.Entries, Entry{Name: it.n.Name, Parent: it.parent, Inode: it.n.Inode})
		sort.Slice(it.n.Children, func(a, b int) bool { return it.n.Children[a].Name < it.n.Children[b].Name })
		for _, c := range it.n.Children {
			q = append(q, item{c, uint32(i)})
		}
	}
	x.Entries[0].Name = ""
	if err := x.validate(); err != nil {
		return nil, fmt.Errorf("building the index: %w", err)
	}
	return x, nil
}
