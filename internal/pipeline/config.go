package pipeline

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"sigs.k8s.io/yaml"
)

// ConfigFile is where the developers' settings live in the source repository.
const ConfigFile = "slipway.yaml"

// maxConfigBytes bounds slipway.yaml: it holds a few settings, and a large
// file is a mistake or an attack on the parser.
const maxConfigBytes = 64 << 10

// Config is slipway.yaml, the settings a service's developers own. The
// settings operations own (registry, signing key, ops repository) are not
// here: they come from the Pipeline, so that a commit to the source cannot
// change where its image goes or who signs it.
//
//	# slipway.yaml
//	test:
//	  command: go test ./...   # run with sh -c in the build context; no test step when absent
//	  image: golang:1.26       # image the command runs in under the Kubernetes executor; the operator's default when absent
//	  network: true            # the command needs the network (HTTP and HTTPS); the Pipeline must allow it
//	build:
//	  context: .               # directory of the repository the build and test run in; "." by default
//	  package: ./cmd/tea       # Go main package, relative to the context; "." by default
//	  dockerfile: Dockerfile   # build this Dockerfile (path from the repository root; no RUN) instead of a Go package
//
// Decoding is strict: an unknown or misspelt field is an error, not a
// setting silently ignored.
type Config struct {
	Test  TestConfig  `json:"test,omitempty"`
	Build BuildConfig `json:"build,omitempty"`
}

// TestConfig describes the test step.
type TestConfig struct {
	Command string `json:"command,omitempty"`
	Image   string `json:"image,omitempty"`
	// Network asks for the network. The local executor then gives the
	// command HTTP and HTTPS through its egress proxy, if the Pipeline
	// allows it (spec.test.allowNetwork); otherwise the command has only
	// a loopback network.
	Network bool `json:"network,omitempty"`
}

// BuildConfig describes the image build.
type BuildConfig struct {
	Context    string `json:"context,omitempty"`
	Package    string `json:"package,omitempty"`
	Dockerfile string `json:"dockerfile,omitempty"`
}

// ParseConfig reads slipway.yaml strictly and fills in the defaults.
func ParseConfig(data []byte) (*Config, error) {
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("%s is %d bytes, over the %d byte limit", ConfigFile, len(data), maxConfigBytes)
	}
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", ConfigFile, err)
	}
	if c.Build.Context == "" {
		c.Build.Context = "."
	}
	if err := relativePath("build.context", c.Build.Context); err != nil {
		return nil, err
	}
	switch {
	case c.Build.Dockerfile != "" && c.Build.Package != "":
		return nil, fmt.Errorf("%s: build.package and build.dockerfile exclude each other: a Go package is built directly, a Dockerfile describes the image", ConfigFile)
	case c.Build.Dockerfile != "":
		if err := relativePath("build.dockerfile", c.Build.Dockerfile); err != nil {
			return nil, err
		}
	default:
		if c.Build.Package == "" {
			c.Build.Package = "."
		}
		if p := c.Build.Package; p != "." && !strings.HasPrefix(p, "./") {
			return nil, fmt.Errorf("%s: build.package %q must be a directory relative to the context, starting with ./", ConfigFile, p)
		}
		if err := relativePath("build.package", c.Build.Package); err != nil {
			return nil, err
		}
	}
	if strings.TrimSpace(c.Test.Command) == "" && c.Test.Command != "" {
		return nil, fmt.Errorf("%s: test.command is blank; remove it to skip the test step", ConfigFile)
	}
	if c.Test.Image != "" {
		if _, err := name.ParseReference(c.Test.Image); err != nil {
			return nil, fmt.Errorf("%s: test.image: %w", ConfigFile, err)
		}
	}
	return &c, nil
}

// relativePath refuses paths that would leave the checkout.
func relativePath(field, p string) error {
	clean := path.Clean(p)
	if path.IsAbs(p) || clean == ".." || strings.HasPrefix(clean, "../") || strings.Contains(p, "\\") {
		return fmt.Errorf("%s: %s %q must be a path inside the repository", ConfigFile, field, p)
	}
	if clean == ".git" || strings.HasPrefix(clean, ".git/") {
		return errors.New(ConfigFile + ": " + field + " must not point into .git")
	}
	return nil
}
