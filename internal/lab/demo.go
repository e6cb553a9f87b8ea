package lab

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitserver"
)

// DemoNamespace holds the demo's Applications and workloads.
const DemoNamespace = "cafe"

// DemoApps are the demo services, each a directory apps/NAME of the ops repo.
var DemoApps = []string{"tea", "coffee"}

//go:embed demo/apps
var demoFiles embed.FS

// Demo commits the sample services to the ops repo, creates their
// Applications and waits until both are Synced and Healthy.
func (l *Lab) Demo(ctx context.Context, info *Info) error {
	files := map[string][]byte{}
	err := fs.WalkDir(demoFiles, "demo", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := demoFiles.ReadFile(path)
		files[path[len("demo/"):]] = b
		return err
	})
	if err != nil {
		return err
	}
	auth := gitserver.BasicAuth{Username: info.Git.Username, Password: info.Git.Password}
	commitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	sha, err := gitserver.CommitFiles(commitCtx, info.Git.OpsRepo, auth, gitserver.Commit{
		Files: files, Message: "Add the tea and coffee services",
		Author: gitserver.Signature{Name: "Slipway demo", Email: "demo@slipway.dev"},
	})
	cancel()
	switch {
	case err == nil:
		l.progress("pushed the demo services to %s (commit %s)", info.Git.OpsRepo, sha[:12])
	case errors.Is(err, gitserver.ErrNoChanges):
		l.progress("the ops repo already holds the demo services")
	default:
		return fmt.Errorf("pushing the demo services: %w", err)
	}

	c, _, err := l.Client()
	if err != nil {
		return err
	}
	if err := l.createDemoApps(ctx, c, info); err != nil {
		return err
	}
	return l.waitDemoHealthy(ctx, c, 3*time.Minute)
}

func (l *Lab) createDemoApps(ctx context.Context, c client.Client, info *Info) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DemoNamespace}}
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", DemoNamespace, err)
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: "ops-repo"}}
	if _, err := controllerutil.CreateOrUpdate(ctx, c, secret, func() error {
		secret.Data = map[string][]byte{"username": []byte(info.Git.Username), "password": []byte(info.Git.Password)}
		return nil
	}); err != nil {
		return fmt.Errorf("storing the ops repo credentials: %w", err)
	}
	for _, name := range DemoApps {
		app := &slipwayv1.Application{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: name}}
		if _, err := controllerutil.CreateOrUpdate(ctx, c, app, func() error {
			app.Spec = slipwayv1.ApplicationSpec{
				Source: slipwayv1.ApplicationSource{
					URL: info.Git.OpsRepo, Ref: slipwayv1.GitRef{Branch: "main"}, Path: "apps/" + name,
					SecretRef: &slipwayv1.LocalObjectReference{Name: secret.Name},
				},
				Destination: slipwayv1.ApplicationDestination{Namespace: DemoNamespace},
				SyncPolicy:  slipwayv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true},
				Interval:    &metav1.Duration{Duration: 30 * time.Second},
			}
			return nil
		}); err != nil {
			return fmt.Errorf("creating Application %s: %w", name, err)
		}
	}
	l.progress("created Applications %v in namespace %s", DemoApps, DemoNamespace)
	return nil
}

func (l *Lab) waitDemoHealthy(ctx context.Context, c client.Client, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	last := map[string]string{}
	for {
		done := 0
		for _, name := range DemoApps {
			app := &slipwayv1.Application{}
			if err := c.Get(ctx, client.ObjectKey{Namespace: DemoNamespace, Name: name}, app); err != nil {
				continue
			}
			state := fmt.Sprintf("%s/%s", orUnknown(app.Status.Sync.Status), orUnknown(app.Status.Health.Status))
			if state != last[name] {
				l.progress("%s: %s", name, state)
				last[name] = state
			}
			if apimeta.IsStatusConditionTrue(app.Status.Conditions, slipwayv1.ConditionReady) {
				done++
			}
		}
		if done == len(DemoApps) {
			l.progress("tea and coffee are Synced and Healthy after %.1fs", time.Since(start).Seconds())
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the demo Applications were not Synced and Healthy within %s: %v (see `slipway app get -n %s NAME --kubeconfig %s`)",
				timeout, last, DemoNamespace, l.Kubeconfig())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func orUnknown(s string) string {
	if s == "" {
		return "Unknown"
	}
	return s
}
