package local_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// A store is a directory in casync's layout; store.Save writes a chunk into
// it and store.Load reads it back verified.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "local-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := local.Open(filepath.Join(dir, "store"), true)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	ctx := context.Background()
	id, _, err := store.Save(ctx, s, []byte("hello, chunk"))
	if err != nil {
		log.Fatal(err)
	}
	data, err := store.Load(ctx, s, id)
	if err != nil {
		log.Fatal(err)
	}
	rel, _ := filepath.Rel(s.Dir(), s.Path(id))
	fmt.Println(rel)
	fmt.Printf("%s\n", data)
	// Output:
	// 73ba/73ba66513fb2ccbd41856d729b68aa6edc1b70afa23f136c04c9478f63706adc.cacnk
	// hello, chunk
}

// A convert stages many chunks and commits them with one file system sync.
func ExampleStore_Stage() {
	dir, err := os.MkdirTemp("", "local-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := local.Open(dir, false)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	ctx := context.Background()
	var ids []store.ID
	for _, chunk := range []string{"one", "two", "three"} {
		id := store.Sum([]byte(chunk))
		if err := s.Stage(ctx, id, store.Encode([]byte(chunk))); err != nil {
			s.Abort()
			log.Fatal(err)
		}
		ids = append(ids, id)
	}
	ok, _ := s.Has(ctx, ids[0])
	fmt.Println("visible before Commit:", ok)
	if err := s.Commit(ctx); err != nil {
		log.Fatal(err)
	}
	for _, id := range ids {
		data, err := store.Load(ctx, s, id)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s %s\n", id.Short(), data)
	}
	// Output:
	// visible before Commit: false
	// 7692c3ad3540 one
	// 3fc4ccfe7458 two
	// 8b5b9db0c13d three
}
