package store_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/mkbootfs/mkbootfs/store"
)

// memStore is the smallest Store: a map, with a hook to fail Get the way a
// remote backend does (plain errors, not ChunkErrors).
type memStore struct {
	mu     sync.Mutex
	chunks map[store.ID][]byte
	puts   int
	getErr error
}

func newMem() *memStore { return &memStore{chunks: map[store.ID][]byte{}} }

func (m *memStore) Get(_ context.Context, id store.ID) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.getErr != nil {
		return nil, m.getErr
	}
	b, ok := m.chunks[id]
	if !ok {
		return nil, store.ErrNotFound
	}
	return b, nil
}

func (m *memStore) Has(_ context.Context, id store.ID) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.chunks[id]
	return ok, nil
}

func (m *memStore) Put(_ context.Context, id store.ID, b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.chunks[id] = bytes.Clone(b)
	m.puts++
	return nil
}

func (m *memStore) String() string { return "mem://test" }
func (m *memStore) Close() error   { return nil }

func TestSaveLoad(t *testing.T) {
	ctx := context.Background()
	m := newMem()
	for _, data := range [][]byte{nil, []byte("a"), random(3, 200<<10)} {
		id, isNew, err := store.Save(ctx, m, data)
		if err != nil || !isNew || id != store.Sum(data) {
			t.Fatalf("Save(%d bytes) = %s, %v, %v; want its Sum, new, nil", len(data), id.Short(), isNew, err)
		}
		if _, isNew, err := store.Save(ctx, m, data); err != nil || isNew {
			t.Fatalf("second Save(%d bytes) = new %v, %v; want not new", len(data), isNew, err)
		}
		got, err := store.Load(ctx, m, id)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Load(%s) = %d bytes, %v; want the %d bytes saved", id.Short(), len(got), err, len(data))
		}
	}
	if m.puts != 3 {
		t.Errorf("%d puts for 3 distinct chunks saved twice each", m.puts)
	}
}

func TestLoadErrors(t *testing.T) {
	ctx := context.Background()
	data := []byte("chunk data")
	id := store.Sum(data)
	other := []byte("other data")
	for _, tc := range []struct {
		name   string
		stored []byte // nil: absent
		getErr error
		is     error
		says   string
	}{
		{"missing", nil, nil, store.ErrNotFound, "chunk not found"},
		{"garbage", []byte("garbage"), nil, store.ErrCorrupt, "not a zstd chunk"},
		{"truncated", store.Encode(data)[:5], nil, store.ErrCorrupt, "not a zstd chunk"},
		{"wrong content", store.Encode(other), nil, store.ErrCorrupt, "content hashes to " + store.Sum(other).Short()},
		{"backend error", nil, errors.New("connection reset"), nil, "connection reset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMem()
			m.getErr = tc.getErr
			if tc.stored != nil {
				m.Put(ctx, id, tc.stored)
			}
			got, err := store.Load(ctx, m, id)
			if got != nil {
				t.Fatalf("Load returned %d bytes with error %v", len(got), err)
			}
			var ce *store.ChunkError
			if !errors.As(err, &ce) || ce.ID != id || ce.Store != m.String() {
				t.Fatalf("Load error %v is not a ChunkError for %s in %s", err, id.Short(), m)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v does not wrap %v", err, tc.is)
			}
			for _, s := range []string{tc.says, id.Short(), m.String()} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not say %q", err, s)
				}
			}
		})
	}
}

// A backend that already returns a ChunkError is not wrapped twice.
func TestLoadKeepsChunkError(t *testing.T) {
	id := store.Sum([]byte("x"))
	m := newMem()
	m.getErr = &store.ChunkError{ID: id, Store: "https://elsewhere", Err: store.ErrNotFound}
	_, err := store.Load(context.Background(), m, id)
	if err != m.getErr {
		t.Fatalf("Load = %v, want the backend's own error %v", err, m.getErr)
	}
}
