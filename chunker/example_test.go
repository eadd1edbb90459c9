package chunker_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"log"
	"math/rand/v2"

	"github.com/mkbootfs/mkbootfs/chunker"
)

// The output pins the chunk format: if it changes, so do the chunk IDs of
// every stream, and existing stores no longer dedup against new ones.
func ExampleNew() {
	data := make([]byte, 512<<10)
	rand.NewChaCha8([32]byte{}).Read(data)

	c, err := chunker.New(bytes.NewReader(data), chunker.DefaultParams)
	if err != nil {
		log.Fatal(err)
	}
	for {
		chunk, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		id := sha256.Sum256(chunk)
		fmt.Printf("%6d bytes  sha256 %x…\n", len(chunk), id[:6])
	}
	// Output:
	// 109568 bytes  sha256 f99fd715f3bf…
	//  90278 bytes  sha256 feff8e665fbd…
	//  57906 bytes  sha256 e616f66f3095…
	//  64656 bytes  sha256 5c4f1b9a3e71…
	//  48696 bytes  sha256 5204ef28807d…
	//  75427 bytes  sha256 bfdc8709a1d7…
	//  77757 bytes  sha256 752d39108aea…
}
