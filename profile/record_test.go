package profile

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
)

const busyboxImage = "mkbootfs-test/busybox:latest"

func busybox(t *testing.T) {
	t.Helper()
	testenv.Docker(t)
	if exec.Command("docker", "image", "inspect", busyboxImage).Run() != nil {
		testenv.Missing(t, "the docker image "+busyboxImage, "scripts/busybox-image.sh imports it")
	}
}

// TestRecordCancelled cancels a recording: the container goes with it.
func TestRecordCancelled(t *testing.T) {
	busybox(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(2*time.Second, cancel)
	_, err := Record(ctx, RecordOptions{Image: busyboxImage, Args: []string{"sleep", "600"}, Timeout: 10 * time.Minute})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Record = %v, want it cancelled", err)
	}
	// Other tests may be profiling at the same time: look for this one's.
	out, _ := exec.Command("docker", "ps", "-a", "--no-trunc", "--filter", "name=mkbootfs-profile-", "--format", "{{.Command}}").Output()
	if strings.Contains(string(out), "sleep 600") {
		t.Errorf("the profiling container is left: %s", out)
	}
}

// TestRecordNoProfile runs an image that is not a boot image: it records
// nothing, and Record says so.
func TestRecordNoProfile(t *testing.T) {
	busybox(t)
	_, err := Record(context.Background(), RecordOptions{Image: busyboxImage, Args: []string{"sh", "-c", "echo not a boot image >&2; exit 3"}, Timeout: time.Minute})
	if err == nil || !strings.Contains(err.Error(), "the run of "+busyboxImage+" left none (exit status 3): not a boot image") {
		t.Fatalf("Record = %v", err)
	}
}
