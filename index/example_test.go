package index_test

import (
	"crypto/sha256"
	"fmt"
	"syscall"

	"github.com/mkbootfs/mkbootfs/index"
)

func ExampleBuild() {
	// The data stream holds hello's bytes; one chunk covers it.
	data := []byte("hello, world\n")
	inodes := []index.Inode{
		{Mode: syscall.S_IFDIR | 0o755},
		{Mode: syscall.S_IFREG | 0o644, Size: int64(len(data))},
		{Mode: syscall.S_IFLNK | 0o777, Target: "hello", Size: 5},
	}
	root := &index.Node{Inode: 0, Children: []*index.Node{
		{Name: "hello", Inode: 1},
		{Name: "greeting", Inode: 2},
	}}
	chunks := []index.Chunk{{ID: sha256.Sum256(data), Size: uint32(len(data))}}
	x, err := index.Build(root, inodes, chunks, map[string]string{"source": "example"})
	if err != nil {
		panic(err)
	}
	b, err := x.MarshalBinary()
	if err != nil {
		panic(err)
	}

	// A reader decodes the bytes and reads through its own chunk fetcher.
	y, err := index.Decode(b)
	if err != nil {
		panic(err)
	}
	e, err := y.Resolve("/hello")
	if err != nil {
		panic(err)
	}
	p := make([]byte, 64)
	n, err := y.ReadAt(y.Entries[e].Inode, p, 7, func(i int) ([]byte, error) { return data, nil })
	if err != nil {
		panic(err)
	}
	fmt.Printf("%s: %q\n", y.Path(e), p[:n])
	first, count := y.Children(index.Root)
	for c := first; c < first+count; c++ {
		fmt.Println(y.Entries[c].Name, y.Inodes[y.Entries[c].Inode].FileMode())
	}
	// Output:
	// /hello: "world\n"
	// greeting Lrwxrwxrwx
	// hello -rw-r--r--
}
