package webhook

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr/funcr"
)

// TestSecretFileIsReadAtEachDelivery: a Secret mounted into the Pod can
// appear, rotate and disappear while the server runs. Ping deliveries name
// no repository, so they are verified by the server's secret alone and
// answered without touching the cluster.
func TestSecretFileIsReadAtEachDelivery(t *testing.T) {
	file := filepath.Join(t.TempDir(), "secret")
	var logs strings.Builder
	h := &Handler{SecretFile: file, Log: funcr.New(func(p, a string) { logs.WriteString(p + a + "\n") }, funcr.Options{})}
	body := []byte(`{"zen":"ping"}`)
	ping := func(secret string) int {
		req := httptest.NewRequest(http.MethodPost, "/hooks/git", bytes.NewReader(body))
		req.Header.Set("X-GitHub-Event", "ping")
		req.Header.Set("X-Hub-Signature-256", Sign([]byte(secret), body))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code
	}
	write := func(content string) {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	if code := ping("first-secret"); code != http.StatusUnauthorized {
		t.Fatalf("no file yet: %d, want 401", code)
	}
	write("first-secret\n")
	if code := ping("first-secret"); code != http.StatusOK {
		t.Fatalf("signed with the file's secret: %d, want 200", code)
	}
	write("second-secret")
	if code := ping("first-secret"); code != http.StatusUnauthorized {
		t.Fatalf("signed with the rotated-out secret: %d, want 401", code)
	}
	if code := ping("second-secret"); code != http.StatusOK {
		t.Fatalf("signed with the rotated-in secret: %d, want 200", code)
	}
	write("   \n")
	if code := ping(""); code != http.StatusUnauthorized {
		t.Fatalf("blank file, delivery signed with an empty key: %d, want 401", code)
	}
	if strings.Contains(logs.String(), "second-secret") || strings.Contains(logs.String(), "first-secret") {
		t.Fatalf("a secret reached the log:\n%s", logs.String())
	}
}
