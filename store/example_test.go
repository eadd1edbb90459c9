package store_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// Save compresses a chunk into a store under its SHA-256; Load fetches it
// back, decompresses it and verifies it against the ID.
func Example() {
	dir, err := os.MkdirTemp("", "store-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	s, err := local.Open(dir, true)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close()

	ctx := context.Background()
	id, isNew, err := store.Save(ctx, s, []byte("hello, chunk"))
	if err != nil {
		log.Fatal(err)
	}
	_, again, _ := store.Save(ctx, s, []byte("hello, chunk"))
	data, err := store.Load(ctx, s, id)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(id.Short(), isNew, again)
	fmt.Printf("%s\n", data)
	// Output:
	// 73ba66513fb2 true false
	// hello, chunk
}
