package store_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

func openLocal(t *testing.T) *local.Store {
	t.Helper()
	l, err := local.Open(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestFailoverConformance(t *testing.T) {
	t.Run("first", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) *storetest.Backend {
			a, b := openLocal(t), openLocal(t)
			return &storetest.Backend{Store: store.Failover(a, b), Corrupt: storetest.CorruptLocal(a)}
		})
	})
	// Every chunk is in the second store: each read misses in the first.
	t.Run("second", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) *storetest.Backend {
			a, b := openLocal(t), openLocal(t)
			return &storetest.Backend{Store: store.Failover(a, b), Writer: b, Corrupt: storetest.CorruptLocal(b)}
		})
	})
}

func TestFailover(t *testing.T) {
	ctx := context.Background()
	data := storetest.Chunk(1, 3000)
	id := store.Sum(data)
	fail := func(context.Context, int) error { return errTransient }
	for _, tc := range []struct {
		name       string
		a, b       string // what each store holds: "good", "corrupt", "" (nothing), or "down"
		want       error  // nil: Load returns the chunk
		has        bool
		hasErr     bool
		aCalls     int // calls to a over two Loads
		notMissing bool
	}{
		{name: "first has it", a: "good", b: "good", has: true, aCalls: 2},
		{name: "second has it", a: "", b: "good", has: true},
		{name: "first corrupt", a: "corrupt", b: "good", has: true},
		{name: "first down", a: "down", b: "good", has: true, aCalls: 1},
		{name: "missing everywhere", a: "", b: "", want: store.ErrNotFound},
		{name: "corrupt everywhere", a: "corrupt", b: "corrupt", want: store.ErrCorrupt, has: true},
		{name: "down and missing", a: "down", b: "", want: errTransient, hasErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mk := func(what string) *flaky {
				f := newFlaky(t, nil)
				switch what {
				case "good":
					f.Store.Put(ctx, id, store.Encode(data))
				case "corrupt":
					f.Store.Put(ctx, id, []byte("not zstd"))
				case "down":
					f.fail = fail
				}
				return f
			}
			a, b := mk(tc.a), mk(tc.b)
			s := store.Failover(a, b)
			for range 2 {
				got, err := store.Load(ctx, s, id)
				switch {
				case tc.want == nil && (err != nil || !bytes.Equal(got, data)):
					t.Fatalf("Load = %d bytes, %v; want the chunk", len(got), err)
				case tc.want != nil && !errors.Is(err, tc.want):
					t.Fatalf("Load: %v; want an error wrapping %v", err, tc.want)
				case tc.want != store.ErrNotFound && errors.Is(err, store.ErrNotFound):
					t.Fatalf("Load: %v; a failed store does not make the chunk missing", err)
				}
			}
			if tc.aCalls != 0 && a.Calls() != tc.aCalls {
				t.Errorf("first store called %d times, want %d", a.Calls(), tc.aCalls)
			}
			ok, err := s.Has(ctx, id)
			if ok != tc.has || (err != nil) != tc.hasErr {
				t.Errorf("Has = %v, %v; want %v (error: %v)", ok, err, tc.has, tc.hasErr)
			}
		})
	}
}

func TestFailoverPutGoesToFirst(t *testing.T) {
	ctx := context.Background()
	a, b := openLocal(t), openLocal(t)
	id, _, err := store.Save(ctx, store.Failover(a, b), []byte("chunk"))
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := a.Has(ctx, id); !ok {
		t.Error("the first store lacks the chunk")
	}
	if ok, _ := b.Has(ctx, id); ok {
		t.Error("the second store got the chunk")
	}
}
