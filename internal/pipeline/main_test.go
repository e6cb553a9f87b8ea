package pipeline

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

var (
	// localExecutor isolates the test commands of every test of the package.
	localExecutor *LocalExecutor
	// testCaches holds the Pipelines' test caches for every test of the
	// package, so that only the first test of a Pipeline compiles the
	// standard library for its tests.
	testCaches string
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "slipway-pipeline-sandbox-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if testCaches, err = os.MkdirTemp("", "slipway-pipeline-caches-"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(testCaches)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	localExecutor = NewLocalExecutor(ctx, LocalOptions{Dir: dir})
	cancel()
	if err := localExecutor.Unisolated(); err != nil {
		fmt.Fprintln(os.Stderr, "the pipeline tests run test commands isolated, which needs root and runc (make deps installs it):", err)
		return 1
	}
	defer func() {
		if probeDir != "" {
			os.RemoveAll(probeDir)
		}
	}()
	return m.Run()
}
