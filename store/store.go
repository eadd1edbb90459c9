// Package store owns chunk stores: content-addressed, zstd-compressed chunks
// addressed by the SHA-256 of their uncompressed bytes.
//
// A backend implements only Store (get, has, put of compressed bytes); the
// codec (Load, Encode), caching, retries and failover are written once here
// and wrap any backend.
package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// ID is the SHA-256 of a chunk's uncompressed bytes.
type ID [32]byte

// Sum returns the ID of the uncompressed chunk data.
func Sum(data []byte) ID { return sha256.Sum256(data) }

// String returns the ID as 64 lowercase hex digits.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short returns the first 12 hex digits, for messages.
func (id ID) Short() string { return hex.EncodeToString(id[:6]) }

// ParseID parses 64 hex digits.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 64 {
		return id, fmt.Errorf("chunk id %q: want 64 hex digits", s)
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, fmt.Errorf("chunk id %q: %w", s, err)
	}
	return id, nil
}

// ErrNotFound is wrapped by errors for chunks a store does not have.
var ErrNotFound = errors.New("chunk not found")

// ErrCorrupt is wrapped by errors for chunks whose bytes do not match their ID.
var ErrCorrupt = errors.New("chunk corrupt")

// ErrCollected is wrapped by errors for chunks that a garbage collection
// of the store removed while a conversion was using them.
var ErrCollected = errors.New("removed by a garbage collection of the store while the conversion ran (its --keep-newer is shorter than the conversion took); convert again")

// ErrReadOnly is wrapped by errors for a Put that the store refuses.
var ErrReadOnly = errors.New("store is read-only")

// Store is a chunk store. Implementations are safe for concurrent use.
type Store interface {
	// Get returns the stored (zstd-compressed) bytes of chunk id, unverified;
	// the error wraps ErrNotFound when the store does not have it.
	Get(ctx context.Context, id ID) ([]byte, error)
	// Has reports whether the store holds chunk id.
	Has(ctx context.Context, id ID) (bool, error)
	// Put stores the compressed bytes of chunk id atomically: readers see
	// the whole chunk or nothing. Putting a chunk the store has is not an error.
	Put(ctx context.Context, id ID, compressed []byte) error
	// String names the store (its URL) in messages.
	String() string
	// Close releases connections and files.
	Close() error
}

// Keeper is a store whose garbage collector spares recently used chunks
// (a directory store's `mkbootfs gc --keep-newer`). Keep reports whether
// the store holds chunk id, as Has does, and if it does marks it used now,
// so that a collection running at the same time keeps it: a writer that
// reuses a chunk it found calls Keep, not Has.
type Keeper interface {
	Keep(ctx context.Context, id ID) (bool, error)
}

// ChunkError is the error for one chunk of one store.
type ChunkError struct {
	ID    ID
	Store string
	Err   error
}

func (e *ChunkError) Error() string {
	return fmt.Sprintf("chunk %s from %s: %v", e.ID.Short(), e.Store, e.Err)
}

func (e *ChunkError) Unwrap() error { return e.Err }

// Loader is a Store that loads chunks itself: Load returns chunk id
// decompressed and verified, as the package's Load does. Load uses it when a
// store implements it, so that a store that must verify a chunk anyway (a
// cache filling itself) does not decode it twice.
type Loader interface {
	Load(ctx context.Context, id ID) ([]byte, error)
}

// Load gets chunk id from s, decompresses it and verifies it against id.
// A chunk that fails verification is never returned.
func Load(ctx context.Context, s Store, id ID) ([]byte, error) {
	if l, ok := s.(Loader); ok {
		return l.Load(ctx, id)
	}
	raw, err := s.Get(ctx, id)
	if err != nil {
		var ce *ChunkError
		if errors.As(err, &ce) {
			return nil, err
		}
		return nil, &ChunkError{ID: id, Store: s.String(), Err: err}
	}
	data, err := Decode(id, raw)
	if err != nil {
		return nil, &ChunkError{ID: id, Store: s.String(), Err: err}
	}
	return data, nil
}

// Save compresses data and puts it into s under its ID, unless s has it.
// It returns the ID and whether the chunk was new.
func Save(ctx context.Context, s Store, data []byte) (ID, bool, error) {
	id := Sum(data)
	ok, err := s.Has(ctx, id)
	if err != nil || ok {
		return id, false, err
	}
	if err := s.Put(ctx, id, Encode(data)); err != nil {
		return id, false, err
	}
	return id, true, nil
}
