package ocistore

import "github.com/mkbootfs/mkbootfs/store"

// Blob returns the digest of the blob that holds chunk id, for tests that
// corrupt it behind the store's back.
func (s *Store) Blob(id store.ID) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	d, ok := s.chunks[id]
	return d.Digest.String(), ok
}
