package imagebuild

import (
	"testing"
)

// TestBinaryImage: a prebuilt binary becomes the only file of a one-layer
// image on an empty base, run as the given user, with the same digest
// every time.
func TestBinaryImage(t *testing.T) {
	opts := BinaryOptions{Binary: []byte("\x7fELF not really"), Path: "/usr/bin/coredns", User: "65532"}
	img, err := BinaryImage(opts)
	if err != nil {
		t.Fatal(err)
	}
	layers := layerEntries(t, img)
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	bin, ok := layers[0]["usr/bin/coredns"]
	if !ok || bin.content != string(opts.Binary) || bin.mode != 0o755 || bin.uid != 0 {
		t.Fatalf("binary entry %+v (present %v) in %v", bin, ok, layers[0])
	}
	if tmp := layers[0]["tmp/"]; tmp.mode != 0o1777 {
		t.Errorf("/tmp mode %o, want 1777", tmp.mode)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != opts.Path || cfg.Config.User != "65532" || cfg.OS != "linux" {
		t.Fatalf("config %+v, os %s", cfg.Config, cfg.OS)
	}
	again, err := BinaryImage(opts)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Fatalf("the same binary gave %s and %s", d1, d2)
	}
	opts.User = ""
	root, err := BinaryImage(opts)
	if err != nil {
		t.Fatal(err)
	}
	if cfg, _ := root.ConfigFile(); cfg.Config.User != "" {
		t.Fatalf("User %q, want root (empty)", cfg.Config.User)
	}
	if _, err := BinaryImage(BinaryOptions{Path: "/x"}); err == nil {
		t.Fatal("an image without a binary was built")
	}
}
