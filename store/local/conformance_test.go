package local_test

import (
	"testing"

	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

func TestConformance(t *testing.T) {
	for name, open := range map[string]func(string, bool) (*local.Store, error){"Open": local.Open, "OpenRoot": local.OpenRoot} {
		t.Run(name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) *storetest.Backend {
				s, err := open(t.TempDir(), false)
				if err != nil {
					t.Fatal(err)
				}
				return &storetest.Backend{Store: s, Corrupt: storetest.CorruptLocal(s)}
			})
		})
	}
}
