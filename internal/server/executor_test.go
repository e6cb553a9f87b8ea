package server

import (
	"strings"
	"testing"

	"k8s.io/client-go/rest"
)

func TestExecutorChoice(t *testing.T) {
	// No request is made while building an executor: an unreachable server will do.
	cfg := &rest.Config{Host: "https://127.0.0.1:1"}
	for name, want := range map[string]string{"": "local", "local": "local", "kubernetes": "kubernetes"} {
		e, err := newExecutor(t.Context(), Options{Config: cfg, Executor: name, RunNamespace: "slipway-runs"})
		if err != nil {
			t.Fatalf("executor %q: %v", name, err)
		}
		if e.Name() != want {
			t.Errorf("executor %q is %q, want %q", name, e.Name(), want)
		}
	}
	if _, err := newExecutor(t.Context(), Options{Config: cfg, Executor: "docker"}); err == nil || !strings.Contains(err.Error(), "local or kubernetes") {
		t.Errorf("an unknown executor gives %v", err)
	}
}
