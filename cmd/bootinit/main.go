// Command bootinit is PID 1 of a converted container: it mounts the image
// lazily and runs the original entrypoint. See package bootinit.
package main

import (
	"os"

	"github.com/mkbootfs/mkbootfs/bootinit"
)

func main() { os.Exit(bootinit.Main(os.Args)) }
