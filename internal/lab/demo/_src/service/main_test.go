package main

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestServe(t *testing.T) {
	rec := httptest.NewRecorder()
	serve(rec, httptest.NewRequest("GET", "/", nil))
	if !strings.Contains(rec.Body.String(), "SERVICE") {
		t.Fatalf("body %q does not serve SERVICE", rec.Body.String())
	}
}
