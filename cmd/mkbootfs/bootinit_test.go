package main

// Tests here build cmd/bootinit with `go build` and run it in containers.
// Importing the package makes its code part of this test binary, so go
// test's cache reruns them when it changes instead of replaying a result.
import _ "github.com/mkbootfs/mkbootfs/bootinit"
