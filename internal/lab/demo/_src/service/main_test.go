package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

func TestServe(t *testing.T) {
	t.Setenv("POD_NAME", "SERVICE-abc12")
	t.Setenv("NODE_NAME", "worker-01")
	rec := httptest.NewRecorder()
	serve(rec, httptest.NewRequest("GET", "/", nil))
	body := rec.Body.String()
	for _, want := range []string{"SERVICE", "pod SERVICE-abc12", "node worker-01"} {
		if !strings.Contains(body, want) {
			t.Fatalf("body %q does not say %q", body, want)
		}
	}
}

func TestHealthFailsWhileDraining(t *testing.T) {
	var draining atomic.Bool
	h := handler(&draining)
	for _, tc := range []struct {
		draining bool
		want     int
	}{{false, http.StatusOK}, {true, http.StatusServiceUnavailable}} {
		draining.Store(tc.draining)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		if rec.Code != tc.want {
			t.Errorf("draining %v: /healthz %d, want %d", tc.draining, rec.Code, tc.want)
		}
	}
}
