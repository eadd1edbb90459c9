package main

import (
	"bytes"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/mkbootfs/mkbootfs/attach"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
)

// TestAttachCmd attaches to a host process with the host's root as tools:
// everything after the target is the command's, flags included; the
// tools image defaults to $MKBOOTFS_TOOLS.
func TestAttachCmd(t *testing.T) {
	testenv.Root(t)
	sleep := exec.Command("sleep", "100")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleep.Process.Kill(); sleep.Wait() }()
	target := "pid:" + strconv.Itoa(sleep.Process.Pid)
	for _, tc := range []struct {
		name  string
		tools string // $MKBOOTFS_TOOLS
		args  []string
		err   string // a substring of the error; none: the command succeeds
	}{
		{"command flags", "", []string{"attach", "--tools", "", target, "sh", "-c", "test -d " + attach.ContainerDir}, ""},
		{"after --", "", []string{"attach", "--tools=", target, "--", "test", "-d", attach.ContainerDir}, ""},
		{"MKBOOTFS_TOOLS", "/nonexistent/tools.idx", []string{"attach", target, "--", "true"}, "/nonexistent/tools.idx"},
		{"no container", "", []string{"attach", "--tools=", "mkbootfs-no-such-container"}, `no running container "mkbootfs-no-such-container"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("MKBOOTFS_TOOLS", tc.tools)
			cmd := newRootCmd()
			var stderr bytes.Buffer
			cmd.SetErr(&stderr)
			cmd.SetArgs(tc.args)
			err := cmd.Execute()
			if tc.err == "" && err != nil {
				t.Fatalf("%v\n%s", err, &stderr)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("got %v, want an error naming %q", err, tc.err)
			}
		})
	}
}
