package imagebuild

import (
	"errors"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// BinaryOptions describes an image of one prebuilt static binary, such as
// an upstream program built from the Go module proxy.
type BinaryOptions struct {
	// Binary is the executable's content; it must not need a C library.
	Binary []byte
	// Path is where the binary is in the image, the entrypoint.
	Path string
	// User the image runs as; "" keeps root, for programs that need
	// capabilities (a user other than root does not get them).
	User string
	// Platform of the image; DefaultPlatform when OS is empty.
	Platform v1.Platform
	// SourceDateEpoch is the time of every file and of the config; the Unix
	// epoch when zero, so the same binary always gives the same digest.
	SourceDateEpoch time.Time
	// Labels are added to the image config.
	Labels map[string]string
}

// BinaryImage layers a prebuilt binary onto an empty base, the way BuildGo
// layers what it compiles.
func BinaryImage(o BinaryOptions) (v1.Image, error) {
	if len(o.Binary) == 0 || o.Path == "" {
		return nil, errors.New("binary image: a binary and its path in the image are required")
	}
	platform := o.Platform
	if platform.OS == "" {
		platform = DefaultPlatform()
	}
	epoch := o.SourceDateEpoch
	if epoch.IsZero() {
		epoch = time.Unix(0, 0)
	}
	epoch = epoch.UTC().Truncate(time.Second)
	base, err := EmptyBase(platform)
	if err != nil {
		return nil, fmt.Errorf("binary image %s: %w", o.Path, err)
	}
	lb := newLayerBuilder()
	if err := lb.addFile(o.Path, o.Binary, 0o755, 0, 0); err != nil {
		return nil, fmt.Errorf("binary image %s: %w", o.Path, err)
	}
	// Programs write temporary files; a read-only root gets an emptyDir here.
	if err := lb.addDir("/tmp", 0o1777, 0, 0); err != nil {
		return nil, fmt.Errorf("binary image %s: %w", o.Path, err)
	}
	layer, err := lb.layer(epoch)
	if err != nil {
		return nil, fmt.Errorf("binary image %s: %w", o.Path, err)
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "slipway binary " + o.Path},
	})
	if err != nil {
		return nil, fmt.Errorf("binary image %s: %w", o.Path, err)
	}
	img, err = configure(img, func(c *v1.Config) {
		c.Entrypoint = []string{o.Path}
		c.Cmd = nil
		c.User = o.User
		c.WorkingDir = "/"
		for k, v := range o.Labels {
			if c.Labels == nil {
				c.Labels = map[string]string{}
			}
			c.Labels[k] = v
		}
	}, epoch)
	if err != nil {
		return nil, fmt.Errorf("binary image %s: %w", o.Path, err)
	}
	return img, nil
}
