package webhook

import (
	"net/http"
	"testing"
)

func FuzzParsePush(f *testing.F) {
	f.Add([]byte(`{"ref":"refs/heads/main","after":"abc","repository":{"clone_url":"http://git/ops.git"}}`))
	f.Add([]byte(`{"ref":1}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"repository":{"ssh_url":"git@host:org/repo.git"},"ref":"refs/tags/v1"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		push, err := ParsePush(body)
		if err == nil && (len(push.RepoURLs) == 0 || push.Ref == "") {
			t.Fatalf("accepted a payload without repository or ref: %+v", push)
		}
		for _, u := range pushURLs(push) {
			_ = NormalizeURL(u)
		}
	})
}

func FuzzVerify(f *testing.F) {
	secret := []byte("s")
	f.Add([]byte("{}"), Sign(secret, []byte("{}")))
	f.Add([]byte("x"), "sha256=zz")
	f.Fuzz(func(t *testing.T, body []byte, sig string) {
		h := http.Header{}
		h.Set("X-Hub-Signature-256", sig)
		if err := Verify(secret, body, h); err == nil && sig != Sign(secret, body) {
			t.Fatalf("accepted signature %q that is not the payload's", sig)
		}
	})
}

func pushURLs(p *Push) []string {
	if p == nil {
		return nil
	}
	return p.RepoURLs
}
