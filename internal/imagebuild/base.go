package imagebuild

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// DefaultPlatform is linux on the machine's architecture: images run on
// Kubernetes nodes, which are Linux whatever the builder runs on.
func DefaultPlatform() v1.Platform {
	return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
}

// EmptyBase returns an image with no layers for platform, in OCI media
// types (which attestations and referrers expect), the base of static Go
// binaries and of Dockerfiles that start FROM scratch.
func EmptyBase(platform v1.Platform) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read empty image config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS = platform.OS
	cfg.Architecture = platform.Architecture
	cfg.Variant = platform.Variant
	cfg.RootFS.Type = "layers"
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("set platform %s on empty image: %w", platform, err)
	}
	return img, nil
}

// PullBase resolves ref in its registry to the image for platform
// (choosing from an index when ref names one). Layers are fetched lazily,
// and a push to the same registry mounts them rather than copying them.
// opts carry the credentials; the context is added here.
func PullBase(ctx context.Context, ref string, platform v1.Platform, opts ...remote.Option) (v1.Image, error) {
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil, fmt.Errorf("parse base image reference %q: %w", ref, err)
	}
	opts = append(opts, remote.WithContext(ctx), remote.WithPlatform(platform))
	start := time.Now()
	img, err := remote.Image(r, opts...)
	ObserveRegistryOperation(RegistryPull, r.Context().RegistryStr(), start, err)
	if err != nil {
		return nil, fmt.Errorf("pull base image %s for %s: %w", r, platform, err)
	}
	// A single-platform image is returned whatever its platform; building
	// an amd64 binary onto an arm64 base would only fail at run time.
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read config of base image %s: %w", r, err)
	}
	if cfg.OS != platform.OS || cfg.Architecture != platform.Architecture {
		return nil, fmt.Errorf("base image %s is for %s/%s, not %s", r, cfg.OS, cfg.Architecture, platform)
	}
	return img, nil
}

// Push writes img to ref (a tag or repository:tag) and returns the
// reference pinned by digest. Blobs the registry already has are not sent
// again.
func Push(ctx context.Context, img v1.Image, ref string, opts ...remote.Option) (name.Digest, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return name.Digest{}, fmt.Errorf("parse image reference %q: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return name.Digest{}, fmt.Errorf("compute digest of image for %s: %w", tag, err)
	}
	opts = append(opts, remote.WithContext(ctx))
	start := time.Now()
	err = remote.Write(tag, img, opts...)
	ObserveRegistryOperation(RegistryPush, tag.RegistryStr(), start, err)
	if err != nil {
		return name.Digest{}, fmt.Errorf("push image to %s: %w", tag, err)
	}
	return tag.Context().Digest(d.String()), nil
}
