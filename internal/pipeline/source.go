package pipeline

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/modfile"
)

// linksStayInside fails when a symbolic link of the checkout dir leads
// out of it (an absolute target, or one that climbs above dir): the go
// command follows links to files, and a link to the server's key would
// put it in a compiler error, or in the image.
func linksStayInside(dir string) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open the checkout %s: %w", dir, err)
	}
	defer root.Close()
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == ".git" {
			return filepath.SkipDir
		}
		if d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		// os.Root resolves the link as the kernel would, and refuses to
		// leave dir on the way.
		if _, err := root.Stat(rel); err != nil && !errors.Is(err, fs.ErrNotExist) {
			target, _ := os.Readlink(p)
			return fmt.Errorf("%s is a link to %s, out of the repository: the build does not follow it (%v)", filepath.ToSlash(rel), target, err)
		}
		return nil
	})
}

// replacementsStayInside fails when the go.mod that governs contextDir
// replaces a module by a directory outside the checkout dir: the build
// would compile the server's files, or another run's, into the image.
func replacementsStayInside(dir, contextDir string) error {
	modDir := contextDir
	for {
		if _, err := os.Lstat(filepath.Join(modDir, "go.mod")); err == nil {
			break
		}
		if modDir == dir {
			return nil // no go.mod in the checkout: go build says what is wrong
		}
		modDir = filepath.Dir(modDir)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open the checkout %s: %w", dir, err)
	}
	defer root.Close()
	relMod, err := filepath.Rel(dir, modDir)
	if err != nil {
		return err
	}
	data, err := root.ReadFile(filepath.Join(relMod, "go.mod"))
	if err != nil {
		return fmt.Errorf("read %s: %w", filepath.Join(relMod, "go.mod"), err)
	}
	f, err := modfile.Parse(filepath.ToSlash(filepath.Join(relMod, "go.mod")), data, nil)
	if err != nil {
		return err
	}
	for _, r := range f.Replace {
		if r.New.Version != "" {
			continue // a module version, downloaded and verified
		}
		target := filepath.Join(relMod, filepath.FromSlash(r.New.Path))
		_, statErr := root.Stat(target)
		if filepath.IsAbs(r.New.Path) || target == ".." || strings.HasPrefix(target, ".."+string(filepath.Separator)) ||
			(statErr != nil && !errors.Is(statErr, fs.ErrNotExist)) {
			return fmt.Errorf("go.mod replaces %s with the directory %s, outside the repository: the build reads only the repository and downloaded modules", r.Old.Path, r.New.Path)
		}
	}
	return nil
}
