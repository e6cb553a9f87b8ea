package lab

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"slipway.dev/slipway/internal/imagebuild"
	"slipway.dev/slipway/internal/upstream"
	"slipway.dev/slipway/internal/version"
)

// The lab's own images, by name: every image the real nodes run besides
// what the demo's Pipelines build. They are built on this machine (the
// pause program from Slipway's source, the others from the upstream
// binaries built from the Go module proxy), pushed to the lab registry, and
// pulled from it by the nodes like any other image.
const (
	imagePause             = "pause"
	imageCoreDNS           = "coredns"
	imageTraefik           = "traefik"
	imageMetalLBController = "metallb-controller"
	imageMetalLBSpeaker    = "metallb-speaker"
)

//go:embed pause/main.go
var pauseSource []byte

// binaryImages are the lab images made of one upstream binary.
var binaryImages = []struct {
	name, binary, path, version string
	// user is who runs it; the speaker stays root, as upstream's image,
	// because it needs NET_RAW for ARP.
	user string
}{
	{imageCoreDNS, "coredns", "/usr/bin/coredns", version.CoreDNS, "65532"},
	{imageTraefik, "traefik", "/usr/bin/traefik", version.Traefik, "65532"},
	{imageMetalLBController, "metallb-controller", "/usr/bin/controller", version.MetalLB, "65534"},
	{imageMetalLBSpeaker, "metallb-speaker", "/usr/bin/speaker", version.MetalLB, ""},
}

// ensureImages makes every lab image present in the lab registry and
// records its reference, pinned by digest, in the state. An image is tagged
// with a hash of what it is built from, so a rebuild happens only when that
// changes.
func (l *Lab) ensureImages(ctx context.Context, st *State) error {
	if st.Images == nil {
		st.Images = map[string]string{}
	}
	repo := st.serviceHost() + ":" + strconv.Itoa(st.Ports.Registry) + "/slipway-lab/"
	auth := remote.WithAuth(&authn.Basic{Username: st.Registry.Username, Password: st.Registry.Password})

	pauseTag := "src-" + shortHash(pauseSource)
	ref, err := l.ensureImage(ctx, repo+imagePause+":"+pauseTag, auth, func() (v1.Image, error) { return buildPause(ctx) })
	if err != nil {
		return err
	}
	st.Images[imagePause] = ref
	for _, bi := range binaryImages {
		binPath := filepath.Join(upstream.NodeBinDir(), bi.binary)
		bin, err := os.ReadFile(binPath)
		if err != nil {
			return fmt.Errorf("reading %s for the %s image: %w", binPath, bi.name, err)
		}
		ref, err := l.ensureImage(ctx, repo+bi.name+":"+bi.version+"-"+shortHash(bin), auth, func() (v1.Image, error) {
			return imagebuild.BinaryImage(imagebuild.BinaryOptions{Binary: bin, Path: bi.path, User: bi.user,
				Labels: map[string]string{"org.opencontainers.image.version": bi.version}})
		})
		if err != nil {
			return err
		}
		st.Images[bi.name] = ref
	}
	return st.save(l.Dir)
}

// ensureImage returns tag pinned by digest, building and pushing the image
// first when the registry does not have the tag.
func (l *Lab) ensureImage(ctx context.Context, tag string, auth remote.Option, build func() (v1.Image, error)) (string, error) {
	ref, err := name.NewTag(tag, name.Insecure)
	if err != nil {
		return "", err
	}
	headCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if desc, err := remote.Head(ref, auth, remote.WithContext(headCtx)); err == nil {
		return ref.Context().Digest(desc.Digest.String()).String(), nil
	}
	start := time.Now()
	img, err := build()
	if err != nil {
		return "", err
	}
	pushCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	d, err := imagebuild.Push(pushCtx, img, tag, auth)
	if err != nil {
		return "", err
	}
	l.progress("built and pushed %s in %.1fs", d, time.Since(start).Seconds())
	return d.String(), nil
}

// buildPause compiles the pause program from the source embedded in this
// binary, so the image needs nothing but Go.
func buildPause(ctx context.Context) (v1.Image, error) {
	dir, err := os.MkdirTemp("", "slipway-pause-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	files := map[string][]byte{
		"go.mod":  []byte("module slipway.dev/lab/pause\n\ngo " + goLanguageVersion() + "\n"),
		"main.go": pauseSource,
	}
	for f, b := range files {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return nil, err
		}
	}
	res, err := imagebuild.BuildGo(ctx, imagebuild.GoOptions{Dir: dir, User: "65535", Timeout: 5 * time.Minute})
	if err != nil {
		return nil, fmt.Errorf("building the pause image: %w", err)
	}
	return res.Image, nil
}

func shortHash(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}
