package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPublishWaitDefault: by default `csi-plugin node` sets no fixed publish wait, so a
// NodePublishVolume waits until shortly before kubelet's deadline (the driver's default), not
// a shorter fixed time after which the pod waits out kubelet's backoff.
func TestPublishWaitDefault(t *testing.T) {
	bin := buildPlugin(t)
	out, _ := exec.Command(bin, "node", "-h").CombinedOutput() // usage, exit status 0
	_, help, ok := strings.Cut(string(out), "-publish-wait duration")
	if !ok {
		t.Fatalf("no --publish-wait in the usage:\n%s", out)
	}
	help, _, _ = strings.Cut(help, "\n  -")
	if strings.Contains(help, "(default") || !strings.Contains(help, "0: until shortly before kubelet's deadline") {
		t.Errorf("--publish-wait:%s\nwant no default wait, and its meaning said", help)
	}
}
