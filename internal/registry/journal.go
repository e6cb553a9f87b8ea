package registry

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// maxManifestBytes is the manifest size limit the OCI distribution spec
// lets registries enforce; it keeps one request from filling memory.
const maxManifestBytes = 4 << 20

// journal persists manifests, which go-containerregistry's registry keeps
// only in memory (its blob handler covers blobs alone). Every manifest put
// or delete that the registry accepts is appended to a journal file, the
// manifest bytes stored by digest beside it; New replays the journal
// through the same handler, so a restarted registry serves what it served
// before, including tags moved or deleted since.
type journal struct {
	inner    http.Handler
	path     string
	bodyDir  string
	mutateMu sync.Mutex
}

type journalRecord struct {
	Op        string `json:"op"`
	Repo      string `json:"repo"`
	Ref       string `json:"ref"`
	Digest    string `json:"digest,omitempty"`
	MediaType string `json:"mediaType,omitempty"`
}

func openJournal(dir string, inner http.Handler) (*journal, error) {
	j := &journal{
		inner:   inner,
		path:    filepath.Join(dir, "manifests.jsonl"),
		bodyDir: filepath.Join(dir, "manifests", "sha256"),
	}
	if err := os.MkdirAll(j.bodyDir, 0o700); err != nil {
		return nil, fmt.Errorf("registry: create manifest directory %s: %w", j.bodyDir, err)
	}
	if err := j.replay(); err != nil {
		return nil, err
	}
	return j, nil
}

func (j *journal) replay() error {
	data, err := os.ReadFile(j.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("registry: read manifest journal %s: %w", j.path, err)
	}
	// A crash can leave a torn last record; what follows the last newline
	// was never acknowledged to a client, so it is dropped.
	if end := bytes.LastIndexByte(data, '\n') + 1; end < len(data) {
		data = data[:end]
		if err := os.Truncate(j.path, int64(end)); err != nil {
			return fmt.Errorf("registry: drop torn record at the end of %s: %w", j.path, err)
		}
	}
	for i, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var rec journalRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			return fmt.Errorf("registry: replay %s line %d: %w", j.path, i+1, err)
		}
		if err := j.apply(rec); err != nil {
			return fmt.Errorf("registry: replay %s line %d (%s %s:%s): %w", j.path, i+1, rec.Op, rec.Repo, rec.Ref, err)
		}
	}
	return nil
}

func (j *journal) apply(rec journalRecord) error {
	target := "/v2/" + rec.Repo + "/manifests/" + rec.Ref
	var req *http.Request
	want := http.StatusAccepted
	switch rec.Op {
	case "put":
		hexDigest, ok := strings.CutPrefix(rec.Digest, "sha256:")
		if !ok {
			return fmt.Errorf("unsupported digest %q", rec.Digest)
		}
		body, err := os.ReadFile(filepath.Join(j.bodyDir, filepath.Base(hexDigest)))
		if err != nil {
			return fmt.Errorf("read manifest body: %w", err)
		}
		req = httptest.NewRequest(http.MethodPut, target, bytes.NewReader(body))
		req.Header.Set("Content-Type", rec.MediaType)
		want = http.StatusCreated
	case "delete":
		req = httptest.NewRequest(http.MethodDelete, target, nil)
	default:
		return fmt.Errorf("unknown operation %q", rec.Op)
	}
	rr := httptest.NewRecorder()
	j.inner.ServeHTTP(rr, req)
	if rr.Code != want {
		return fmt.Errorf("registry answered %d: %s", rr.Code, strings.TrimSpace(rr.Body.String()))
	}
	return nil
}

// manifestTarget splits /v2/<repo>/manifests/<ref> the way the registry
// handler does.
func manifestTarget(path string) (repo, ref string, ok bool) {
	elem := strings.Split(path, "/")[1:]
	if len(elem) < 4 || elem[0] != "v2" || elem[len(elem)-2] != "manifests" {
		return "", "", false
	}
	return strings.Join(elem[1:len(elem)-2], "/"), elem[len(elem)-1], true
}

func (j *journal) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	repo, ref, ok := manifestTarget(r.URL.Path)
	if !ok || (r.Method != http.MethodPut && r.Method != http.MethodDelete) {
		j.inner.ServeHTTP(w, r)
		return
	}
	rec := journalRecord{Op: "delete", Repo: repo, Ref: ref}
	if r.Method == http.MethodPut {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxManifestBytes))
		if err != nil {
			writeError(w, http.StatusRequestEntityTooLarge, "SIZE_INVALID", "manifest too large or unreadable: "+err.Error())
			return
		}
		sum := sha256.Sum256(body)
		hexDigest := hex.EncodeToString(sum[:])
		// Stored before the registry sees it: an orphaned body is harmless,
		// a journal record without its body is not.
		if err := writeFileAtomic(filepath.Join(j.bodyDir, hexDigest), body); err != nil {
			writeError(w, http.StatusInternalServerError, "UNKNOWN", "store manifest: "+err.Error())
			return
		}
		rec.Op, rec.Digest, rec.MediaType = "put", "sha256:"+hexDigest, r.Header.Get("Content-Type")
		r = r.Clone(r.Context())
		r.Body = io.NopCloser(bytes.NewReader(body))
	}

	// Held across the change and its record so that the journal's order
	// is the order the registry applied them in.
	j.mutateMu.Lock()
	defer j.mutateMu.Unlock()
	rr := httptest.NewRecorder()
	j.inner.ServeHTTP(rr, r)
	if rr.Code == http.StatusCreated || rr.Code == http.StatusAccepted {
		if err := j.append(rec); err != nil {
			writeError(w, http.StatusInternalServerError, "UNKNOWN", "record manifest change: "+err.Error())
			return
		}
	}
	for k, v := range rr.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rr.Code)
	_, _ = w.Write(rr.Body.Bytes())
}

func (j *journal) append(rec journalRecord) error {
	line, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(line, '\n'))
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if err = errors.Join(err, f.Close()); err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": code, "message": msg}}})
	_, _ = w.Write(body)
}
