package imagebuild

import (
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"slipway.dev/slipway/internal/registry"
)

type testRegistry struct{ *registry.Server }

func (testRegistry) auth() remote.Option {
	return remote.WithAuth(&authn.Basic{Username: "builder", Password: "builder-pass"})
}

// keychain gives the test registry's credentials to it alone.
func (r testRegistry) keychain() authn.Keychain {
	return RegistryKeychain(r.Host(), &authn.Basic{Username: "builder", Password: "builder-pass"})
}

func startRegistry(t *testing.T) testRegistry {
	t.Helper()
	s, err := registry.New(registry.Config{Dir: t.TempDir(), Username: "builder", Password: "builder-pass"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return testRegistry{s}
}
