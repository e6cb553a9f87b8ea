package imagebuild

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestWithBusyboxRefusesADynamicBinary: the runner image has no C
// library, so a busybox that needs a dynamic loader would not start.
func TestWithBusyboxRefusesADynamicBinary(t *testing.T) {
	base, err := EmptyBase(DefaultPlatform())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WithBusybox(base, []byte("#!/bin/sh\necho not an executable\n"), time.Unix(0, 0)); err == nil || !strings.Contains(err.Error(), "not an ELF") {
		t.Fatalf("a script as busybox: %v", err)
	}
	// Debian's own programs are dynamically linked.
	dynamic, err := os.ReadFile("/usr/bin/env")
	if err != nil {
		t.Skipf("no dynamically linked program to try: %v", err)
	}
	if _, err := WithBusybox(base, dynamic, time.Unix(0, 0)); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("a dynamically linked busybox: %v", err)
	}
}
