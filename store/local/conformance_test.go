package local_test

import (
	"testing"

	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) *storetest.Backend {
		s, err := local.Open(t.TempDir(), false)
		if err != nil {
			t.Fatal(err)
		}
		return &storetest.Backend{Store: s, Corrupt: storetest.CorruptLocal(s)}
	})
}

func TestConformanceRoot(t *testing.T) {
	storetest.Run(t, func(t *testing.T) *storetest.Backend {
		s, err := local.OpenRoot(t.TempDir(), false)
		if err != nil {
			t.Fatal(err)
		}
		return &storetest.Backend{Store: s, Corrupt: storetest.CorruptLocal(s)}
	})
}
