package bootinit_test

// The end-to-end tests build cmd/bootinit with `go build` and run it in
// containers. Importing the package makes its code, and everything it
// links, part of this test binary, so go test's cache reruns the tests
// when any of it changes instead of replaying an old result.
import _ "github.com/mkbootfs/mkbootfs/bootinit"
