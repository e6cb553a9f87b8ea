// Package e2e_test proves the audit trail against real `slipway server`
// processes (this test binary, run again as the server), a real API
// server, git server, registry and PostgreSQL: what a scripted delivery
// records in each store, and what survives kill -9.
package e2e_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"

	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/postgres"
	"slipway.dev/slipway/internal/server"
	"slipway.dev/slipway/internal/signing"
	"slipway.dev/slipway/internal/testenv"
)

var (
	env        *testenv.Env
	git        *gitserver.Server
	gitAuth    = gitserver.BasicAuth{Username: "slipway", Password: "e2e-git-password-5d1e"}
	kubeconfig string
	repoSeq    atomic.Int64
	testCtx    = context.Background()

	pg        *postgres.Server
	pgMissing string
	pgOnce    sync.Once
	pgDir     string
)

// childEnv carries a child server's configuration, as JSON.
const childEnv = "SLIPWAY_AUDIT_E2E_SERVER"

// childConfig is what a child server runs with.
type childConfig struct {
	Kubeconfig         string
	Addr               string
	Store              string
	StorePasswordFile  string
	KeyFile            string
	WebhookSecret      string
	Dir                string
	CheckpointInterval time.Duration
	Log                string
}

func TestMain(m *testing.M) {
	if cfg := os.Getenv(childEnv); cfg != "" {
		os.Exit(runChild(cfg))
	}
	os.Exit(run(m))
}

// runChild is `slipway server` as the tests start it: until SIGTERM.
func runChild(raw string) int {
	var cfg childConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	logFile, err := os.OpenFile(cfg.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctrl.SetLogger(funcr.New(func(prefix, args string) { fmt.Fprintln(logFile, time.Now().Format(time.RFC3339Nano), prefix, args) }, funcr.Options{}))
	rest, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		fmt.Fprintln(logFile, err)
		return 2
	}
	rest.QPS, rest.Burst = 200, 400
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	err = server.Run(ctx, server.Options{
		Config: rest, Addr: cfg.Addr, WebhookSecret: []byte(cfg.WebhookSecret), Concurrency: 4,
		GitCacheDir: filepath.Join(cfg.Dir, "git"), RunDir: filepath.Join(cfg.Dir, "runs"), CacheDir: filepath.Join(cfg.Dir, "caches"),
		DefaultServiceAccount: testenv.TenantServiceAccount,
		Audit: server.AuditOptions{Store: cfg.Store, StorePasswordFile: cfg.StorePasswordFile, KeyFile: cfg.KeyFile,
			CheckpointInterval: cfg.CheckpointInterval},
	})
	if err != nil {
		fmt.Fprintln(logFile, "server:", err)
		return 1
	}
	return 0
}

func run(m *testing.M) int {
	var err error
	if env, err = testenv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer env.Stop()
	dir, err := os.MkdirTemp("", "slipway-audit-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	raw, err := env.Kubeconfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	kubeconfig = filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, raw, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if git, err = gitserver.New(filepath.Join(dir, "git"), gitAuth.Username, gitAuth.Password); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := git.Start(testCtx, ""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer git.Close()
	defer func() {
		if pg != nil {
			pg.Stop()
			os.RemoveAll(pgDir)
		}
	}()
	return m.Run()
}

// requirePostgres starts the package's PostgreSQL on first use, or skips
// saying why it cannot run (make deps installs it).
func requirePostgres(t *testing.T) {
	t.Helper()
	pgOnce.Do(func() {
		if _, err := postgres.BinDir(); err != nil {
			pgMissing = err.Error()
			return
		}
		var err error
		if pgDir, err = os.MkdirTemp("", "slipway-audit-e2e-pg-"); err == nil {
			pg, err = postgres.Start(testCtx, pgDir)
		}
		if err != nil {
			pgMissing = "starting it failed: " + err.Error()
		}
	})
	if pg == nil {
		if strings.HasPrefix(pgMissing, "starting") {
			t.Fatal(pgMissing)
		}
		testenv.MissingDependency(t, "PostgreSQL is not available: %s", pgMissing)
	}
}

// store is an audit store a child server writes: where, and how the
// test reads it.
type store struct {
	location     string
	passwordFile string
	key          *ecdsa.PrivateKey
	keyFile      string
}

func fileStore(t *testing.T) *store {
	dir := t.TempDir()
	return &store{location: filepath.Join(dir, "audit"), key: newKey(t, dir)}
}

func postgresStore(t *testing.T) *store {
	requirePostgres(t)
	name := fmt.Sprintf("e2e_%d", repoSeq.Add(1))
	if err := pg.CreateDatabase(testCtx, name); err != nil {
		t.Fatal(err)
	}
	if err := audit.SetupPostgres(testCtx, pg.SuperDSN(name), "slipway_audit", "e2e-writer-password"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pw := filepath.Join(dir, "password")
	os.WriteFile(pw, []byte("e2e-writer-password\n"), 0o600)
	s := &store{location: pg.DSN("slipway_audit", "", name), passwordFile: pw}
	s.key = newKey(t, dir)
	s.keyFile = filepath.Join(dir, "audit.key")
	return s
}

// newKey writes an audit key to dir/audit.key (where a file store also
// finds it) and returns it.
func newKey(t *testing.T, dir string) *ecdsa.PrivateKey {
	k, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := signing.EncodePrivateKey(k)
	for _, d := range []string{dir, filepath.Join(dir, "audit")} {
		os.MkdirAll(d, 0o700)
		if err := os.WriteFile(filepath.Join(d, "audit.key"), pem, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// records reads and verifies the store, failing the test if it cannot be read.
func (s *store) records(t *testing.T) ([]*audit.Record, *audit.Result) {
	t.Helper()
	out, res, err := s.read()
	if err != nil {
		t.Fatal(err)
	}
	return out, res
}

// read reads and verifies the store.
func (s *store) read() ([]*audit.Record, *audit.Result, error) {
	password := ""
	if s.passwordFile != "" {
		b, _ := os.ReadFile(s.passwordFile)
		password = strings.TrimSpace(string(b))
	}
	st, err := audit.OpenStore(testCtx, s.location, password, true)
	if err != nil {
		return nil, nil, err
	}
	defer st.Close()
	var out []*audit.Record
	res, err := audit.VerifyEach(testCtx, st, &s.key.PublicKey, func(r *audit.Record) { out = append(out, r) })
	return out, res, err
}

// child is one running server process.
type child struct {
	cmd    *exec.Cmd
	cfg    childConfig
	exited chan error
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startServer starts a server process writing to s and waits until it is
// ready (caches synced).
func startServer(t *testing.T, s *store, dir, addr string) *child {
	t.Helper()
	cfg := childConfig{Kubeconfig: kubeconfig, Addr: addr, Store: s.location, StorePasswordFile: s.passwordFile, KeyFile: s.keyFile,
		WebhookSecret: webhookSecret, Dir: dir, CheckpointInterval: 2 * time.Second, Log: filepath.Join(dir, "server.log")}
	raw, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, cfg: cfg, exited: make(chan error, 1)}
	go func() { c.exited <- cmd.Wait() }()
	t.Cleanup(func() { c.kill() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return c
			}
		}
		select {
		case err := <-c.exited:
			c.exited <- err
			t.Fatalf("the server exited before it was ready (%v); its log:\n%s", err, tail(cfg.Log, 40))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server at %s was not ready within 60s; its log:\n%s", addr, tail(cfg.Log, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill sends SIGKILL to the server and waits for it.
func (c *child) kill() {
	_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
	err := <-c.exited
	c.exited <- err
}

// stop asks the server to stop (it writes a last checkpoint) and waits.
func (c *child) stop(t *testing.T) {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-c.exited:
		c.exited <- err
	case <-time.After(45 * time.Second):
		c.kill()
		t.Fatalf("the server did not stop within 45s of SIGTERM; its log:\n%s", tail(c.cfg.Log, 40))
	}
}

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// eventually polls check until it returns nil, or fails after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

var errNotYet = errors.New("not yet")

const webhookSecret = "e2e-webhook-secret-91c4"
