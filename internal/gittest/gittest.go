// Package gittest reads what tests pushed to a git server.
package gittest

import (
	"context"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/memfs"
	"github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing/object"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/go-git/go-git/v5/storage/memory"
)

// Head clones the repository at url (in memory, within 30 s) and returns the
// commit at its default branch and the content of the file at path there.
func Head(t testing.TB, url, username, password, path string) (*object.Commit, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	repo, err := git.CloneContext(ctx, memory.NewStorage(), memfs.New(), &git.CloneOptions{
		URL: url, Auth: &githttp.BasicAuth{Username: username, Password: password},
	})
	if err != nil {
		t.Fatalf("cloning %s: %v", url, err)
	}
	head, err := repo.Head()
	if err != nil {
		t.Fatalf("reading the head of %s: %v", url, err)
	}
	c, err := repo.CommitObject(head.Hash())
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.File(path)
	if err != nil {
		t.Fatalf("%s at %s: %v", path, c.Hash, err)
	}
	content, err := f.Contents()
	if err != nil {
		t.Fatal(err)
	}
	return c, content
}
