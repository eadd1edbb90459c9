// Package storetest is the conformance suite every chunk store passes, in
// the manner of restic's backend test suite: one table of behaviours (round
// trip, missing, put of an existing chunk, read-only, corrupt, concurrent,
// cancelled, stalled) run against every backend and wrapper.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// Backend is one store under test and the hooks the suite needs.
type Backend struct {
	// Store is the store under test, empty when the suite gets it. The suite
	// closes it at the end of the subtest.
	Store store.Store
	// Writer, when set, is how the suite puts chunks in: the directory a
	// read-only server serves. Nil means Store.
	Writer store.Store
	// ReadOnly says Store must refuse Put with store.ErrReadOnly.
	ReadOnly bool
	// Corrupt replaces the stored bytes of chunk id with raw behind the
	// store's back. Nil skips the corrupt behaviour.
	Corrupt func(id store.ID, raw []byte) error
	// Stall makes the server stop answering while it keeps connections
	// open, to show that requests end with their context. Nil skips it.
	Stall func()
	// LocalHas says Has answers from what the store learned before (an OCI
	// store's chunk manifests) without a request, so a stalled server
	// cannot hold it up: the stalled behaviour checks Get alone.
	LocalHas bool
}

// hangLimit is how long an operation may take before the suite calls it
// hung: far above any honest answer on loopback, so it asserts no timing.
const hangLimit = 2 * time.Minute

// Run runs every behaviour against a fresh backend from open.
func Run(t *testing.T, open func(t *testing.T) *Backend) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, b *Backend)
	}{
		{"RoundTrip", testRoundTrip},
		{"Missing", testMissing},
		{"PutExisting", testPutExisting},
		{"ReadOnly", testReadOnly},
		{"Corrupt", testCorrupt},
		{"Concurrent", testConcurrent},
		{"Cancelled", testCancelled},
		{"Stalled", testStalled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := open(t)
			t.Cleanup(func() {
				if err := b.Store.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, b)
		})
	}
}

// CorruptLocal returns a Corrupt hook that overwrites chunks in a local store.
func CorruptLocal(s *local.Store) func(store.ID, []byte) error {
	return func(id store.ID, raw []byte) error { return os.WriteFile(s.Path(id), raw, 0o644) }
}

// Chunk returns n pseudo-random bytes that compress to about half, like
// file data, the same for the same seed.
func Chunk(seed uint64, n int) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)}))
	b := make([]byte, n)
	var v uint64
	for i := range b {
		if i%16 == 0 {
			v = r.Uint64()
		}
		b[i] = byte(v & 15) // 4 bits of entropy a byte
		v >>= 4
	}
	return b
}

func (b *Backend) writer() store.Store {
	if b.Writer != nil {
		return b.Writer
	}
	return b.Store
}

// put stores data through the backend's writer and returns its ID.
func (b *Backend) put(t *testing.T, data []byte) store.ID {
	t.Helper()
	id := store.Sum(data)
	if err := noHang(t, "Put", func() error { return b.writer().Put(context.Background(), id, store.Encode(data)) }); err != nil {
		t.Fatalf("Put %s: %v", id.Short(), err)
	}
	return id
}

func testRoundTrip(t *testing.T, b *Backend) {
	ctx := context.Background()
	for _, size := range []int{0, 1, 4 << 10, 64 << 10, 1 << 20} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			data := Chunk(uint64(size), size)
			id := b.put(t, data)
			var ok bool
			if err := noHang(t, "Has", func() (err error) { ok, err = b.Store.Has(ctx, id); return err }); err != nil || !ok {
				t.Fatalf("Has after Put = %v, %v; want true", ok, err)
			}
			var raw []byte
			if err := noHang(t, "Get", func() (err error) { raw, err = b.Store.Get(ctx, id); return err }); err != nil {
				t.Fatalf("Get: %v", err)
			}
			if want := store.Encode(data); !bytes.Equal(raw, want) {
				t.Fatalf("Get returned %d bytes, want the %d stored", len(raw), len(want))
			}
			got := load(t, ctx, b.Store, id)
			if !bytes.Equal(got, data) {
				t.Fatalf("Load returned %d bytes that differ from the %d put", len(got), len(data))
			}
		})
	}
}

func load(t *testing.T, ctx context.Context, s store.Store, id store.ID) []byte {
	t.Helper()
	var data []byte
	if err := noHang(t, "Load", func() (err error) { data, err = store.Load(ctx, s, id); return err }); err != nil {
		t.Fatalf("Load %s: %v", id.Short(), err)
	}
	return data
}

func testMissing(t *testing.T, b *Backend) {
	ctx := context.Background()
	b.put(t, Chunk(1, 100)) // the store is not empty, and the chunk's directory may exist
	id := store.Sum([]byte("never stored"))
	var ok bool
	if err := noHang(t, "Has", func() (err error) { ok, err = b.Store.Has(ctx, id); return err }); err != nil || ok {
		t.Errorf("Has(missing) = %v, %v; want false, nil", ok, err)
	}
	var raw []byte
	err := noHang(t, "Get", func() (err error) { raw, err = b.Store.Get(ctx, id); return err })
	if !errors.Is(err, store.ErrNotFound) || raw != nil {
		t.Errorf("Get(missing) = %d bytes, %v; want an error wrapping ErrNotFound", len(raw), err)
	}
	_, err = store.Load(ctx, b.Store, id)
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Load(missing): %v; want an error wrapping ErrNotFound", err)
	}
}

func testPutExisting(t *testing.T, b *Backend) {
	data := Chunk(2, 10000)
	b.put(t, data)
	id := b.put(t, data)
	if got := load(t, context.Background(), b.Store, id); !bytes.Equal(got, data) {
		t.Fatal("chunk changed after a second Put")
	}
}

func testReadOnly(t *testing.T, b *Backend) {
	if !b.ReadOnly {
		t.Skip("the store is writable")
	}
	data := Chunk(3, 1000)
	id := store.Sum(data)
	err := noHang(t, "Put", func() error { return b.Store.Put(context.Background(), id, store.Encode(data)) })
	if !errors.Is(err, store.ErrReadOnly) {
		t.Fatalf("Put on a read-only store: %v; want an error wrapping ErrReadOnly", err)
	}
	if ok, err := b.Store.Has(context.Background(), id); ok || err != nil {
		t.Fatalf("Has after a refused Put = %v, %v; want false, nil", ok, err)
	}
}

func testCorrupt(t *testing.T, b *Backend) {
	if b.Corrupt == nil {
		t.Skip("the backend has no Corrupt hook")
	}
	data := Chunk(4, 50000)
	good := store.Encode(data)
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"garbage", Chunk(5, 1000)},
		{"truncated", good[:len(good)/2]},
		{"empty", []byte{}},
		{"other chunk", store.Encode(Chunk(6, 50000))},
		{"flipped bit", flip(good)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := b.put(t, data)
			if err := b.Corrupt(id, tc.raw); err != nil {
				t.Fatalf("Corrupt: %v", err)
			}
			var got []byte
			err := noHang(t, "Load", func() (err error) { got, err = store.Load(context.Background(), b.Store, id); return err })
			if !errors.Is(err, store.ErrCorrupt) || got != nil {
				t.Fatalf("Load of a corrupt chunk = %d bytes, %v; want an error wrapping ErrCorrupt", len(got), err)
			}
		})
	}
}

func flip(b []byte) []byte {
	c := bytes.Clone(b)
	c[len(c)*2/3] ^= 0x10
	return c
}

func testConcurrent(t *testing.T, b *Backend) {
	const chunks, workers = 48, 8
	ctx := context.Background()
	data := make([][]byte, chunks)
	for i := range data {
		data[i] = Chunk(uint64(100+i), 1000+i*997)
	}
	run := func(name string, fn func(i int) error) {
		t.Helper()
		var g errgroup.Group
		g.SetLimit(workers)
		for i := range chunks * 2 { // every chunk twice, racing with itself
			g.Go(func() error { return fn(i % chunks) })
		}
		if err := noHang(t, name, g.Wait); err != nil {
			t.Fatal(err)
		}
	}
	run("concurrent Put", func(i int) error {
		return b.writer().Put(ctx, store.Sum(data[i]), store.Encode(data[i]))
	})
	run("concurrent Has and Load", func(i int) error {
		id := store.Sum(data[i])
		if ok, err := b.Store.Has(ctx, id); err != nil || !ok {
			return fmt.Errorf("concurrent Has %s = %v, %v", id.Short(), ok, err)
		}
		got, err := store.Load(ctx, b.Store, id)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, data[i]) {
			return fmt.Errorf("concurrent Load %s: wrong bytes", id.Short())
		}
		return nil
	})
}

// testCancelled calls every operation with a context already cancelled: a
// store may still answer (correctly) or stop with the context's error, but
// it must return.
func testCancelled(t *testing.T, b *Backend) {
	data := Chunk(7, 3000)
	id := b.put(t, data)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ctxErr := func(op string, err error) {
		t.Helper()
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: %v; want nil or an error wrapping context.Canceled", op, err)
		}
	}
	var raw []byte
	err := noHang(t, "Get", func() (err error) { raw, err = b.Store.Get(ctx, id); return err })
	ctxErr("Get", err)
	if err == nil && !bytes.Equal(raw, store.Encode(data)) {
		t.Error("Get with a cancelled context returned wrong bytes")
	}
	ctxErr("Has", noHang(t, "Has", func() error { _, err := b.Store.Has(ctx, id); return err }))
	if !b.ReadOnly {
		ctxErr("Put", noHang(t, "Put", func() error { return b.Store.Put(ctx, id, store.Encode(data)) }))
	}
}

// testStalled stalls the server: Get and Has must end when their context
// expires, with an error that says so.
func testStalled(t *testing.T, b *Backend) {
	if b.Stall == nil {
		t.Skip("the backend has no Stall hook")
	}
	id := b.put(t, Chunk(8, 3000))
	b.Stall()
	for _, op := range []struct {
		name string
		fn   func(ctx context.Context) error
	}{
		{"Get", func(ctx context.Context) error { _, err := b.Store.Get(ctx, id); return err }},
		{"Has", func(ctx context.Context) error { _, err := b.Store.Has(ctx, id); return err }},
		{"Get again", func(ctx context.Context) error { _, err := b.Store.Get(ctx, id); return err }},
	} {
		if op.name == "Has" && b.LocalHas {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := noHang(t, op.name, func() error { return op.fn(ctx) })
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s on a stalled server: %v; want an error wrapping context.DeadlineExceeded", op.name, err)
		}
	}
}

// noHang runs fn and fails the test if it does not return within hangLimit.
func noHang(t *testing.T, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(hangLimit):
		t.Fatalf("%s hung for %v", what, hangLimit)
		return nil
	}
}
