package local_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/mkbootfs/mkbootfs/store"
)

const (
	helperEnv   = "MKBOOTFS_STORE_WRITER" // "dir writer-number" for TestHelperProcess
	procChunks  = 300
	procWriters = 2
)

// procChunk is chunk k of the concurrency test: 1..57 KiB, so the writers
// spend their time on files, not bytes.
func procChunk(k int) []byte { return chunk(uint64(1000+k), 1<<10+k%8*8<<10) }

// writes reports whether writer w writes chunk k: each writer takes two
// thirds, so a third is written by both, in the same order, at the same time.
func writes(w, k int) bool { return k%3 == w || k%3 == 2 }

// TestHelperProcess is one writer of TestConcurrentProcesses when run by it
// in a child process; otherwise it does nothing.
func TestHelperProcess(t *testing.T) {
	args := strings.Fields(os.Getenv(helperEnv))
	if len(args) != 2 {
		return
	}
	w, _ := strconv.Atoi(args[1])
	s := open(t, args[0])
	ctx := context.Background()
	os.Stdin.Read(make([]byte, 1)) // start line: the parent closes stdin
	staged := 0
	for k := range procChunks {
		if !writes(w, k) {
			continue
		}
		data := procChunk(k)
		// The shared chunks are Put by one writer while the other stages them.
		if (k/3+w)%2 == 0 {
			if err := s.Put(ctx, store.Sum(data), store.Encode(data)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := s.Stage(ctx, store.Sum(data), store.Encode(data)); err != nil {
			t.Fatal(err)
		}
		if staged++; staged%16 == 0 {
			if err := s.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// Two processes write overlapping chunk sets into one store while readers
// load what they find: no reader ever sees a partial or corrupt chunk, and
// afterwards every chunk is there, verifies, and no temp file is left.
func TestConcurrentProcesses(t *testing.T) {
	ctx := context.Background()
	s := open(t, t.TempDir())
	want := map[store.ID][]byte{}
	ids := make([]store.ID, procChunks)
	for k := range ids {
		data := procChunk(k)
		ids[k] = store.Sum(data)
		want[ids[k]] = data
	}

	var procs []*exec.Cmd
	var starts []interface{ Close() error }
	for w := range procWriters {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d", helperEnv, s.Dir(), w))
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("writer %d:\n%s", w, out.String())
			}
		})
		procs, starts = append(procs, cmd), append(starts, stdin)
	}

	var done atomic.Bool
	var loaded atomic.Int64
	var readers sync.WaitGroup
	readers.Go(func() {
		rng := rand.New(rand.NewPCG(1, 0))
		for !done.Load() {
			id := ids[rng.IntN(len(ids))]
			ok, err := s.Has(ctx, id)
			if err != nil {
				t.Error(err)
				return
			}
			if !ok {
				continue
			}
			got, err := store.Load(ctx, s, id)
			if err != nil || !bytes.Equal(got, want[id]) {
				t.Errorf("reader: chunk %s visible but Load = %d bytes, %v", id.Short(), len(got), err)
				return
			}
			loaded.Add(1)
		}
	})
	readers.Go(func() {
		for !done.Load() {
			err := s.Walk(func(id store.ID) error {
				got, err := store.Load(ctx, s, id)
				if err != nil || !bytes.Equal(got, want[id]) {
					return fmt.Errorf("walker: chunk %s listed but Load = %d bytes, %v", id.Short(), len(got), err)
				}
				loaded.Add(1)
				return nil
			})
			if err != nil {
				t.Error(err)
				return
			}
		}
	})

	for _, c := range starts {
		c.Close()
	}
	for w, cmd := range procs {
		if err := cmd.Wait(); err != nil {
			t.Errorf("writer %d: %v", w, err)
		}
	}
	done.Store(true)
	readers.Wait()
	if t.Failed() {
		return
	}
	if got := walk(t, s); len(got) != procChunks {
		t.Fatalf("store holds %d chunks, want %d", len(got), procChunks)
	}
	checkClean(t, s)
	t.Logf("readers loaded %d chunks while the writers ran", loaded.Load())
}
