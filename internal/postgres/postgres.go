// Package postgres runs Debian's PostgreSQL server for Slipway's lab and
// tests: a cluster of its own in a directory (initdb), on a loopback port,
// as an unprivileged user (PostgreSQL refuses to run as root).
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Superuser is the name of the cluster's superuser.
const Superuser = "postgres"

// debianRoot holds one bin directory per installed major version.
const debianRoot = "/usr/lib/postgresql"

// BinDir finds the server binaries: the newest of Debian's
// /usr/lib/postgresql/<version>/bin, or what pg_config reports.
func BinDir() (string, error) {
	entries, _ := os.ReadDir(debianRoot)
	var versions []int
	for _, e := range entries {
		if v, err := strconv.Atoi(e.Name()); err == nil {
			if _, err := os.Stat(filepath.Join(debianRoot, e.Name(), "bin", "postgres")); err == nil {
				versions = append(versions, v)
			}
		}
	}
	if len(versions) > 0 {
		return filepath.Join(debianRoot, strconv.Itoa(slices.Max(versions)), "bin"), nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := string(out[:len(out)-1])
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir, nil
		}
	}
	return "", errors.New("PostgreSQL's server binaries were not found (install Debian's package: apt-get install -y postgresql, or `make deps`)")
}

// Account is who the server runs as: the current user, or, for root, the
// postgres account Debian's package creates (else nobody).
type Account struct {
	Name     string
	UID, GID uint32
	// Switch is set when the server must run as another user than this process.
	Switch bool
}

// ServerAccount chooses the account.
func ServerAccount() (*Account, error) {
	if os.Geteuid() != 0 {
		return &Account{Name: "current user", UID: uint32(os.Getuid()), GID: uint32(os.Getgid())}, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		return &Account{Name: name, UID: uint32(uid), GID: uint32(gid), Switch: true}, nil
	}
	return nil, errors.New("running as root, and neither a postgres nor a nobody account exists to run PostgreSQL as")
}

// Credential is what exec needs to start a process as the account.
func (a *Account) Credential() *syscall.Credential {
	if !a.Switch {
		return nil
	}
	return &syscall.Credential{Uid: a.UID, Gid: a.GID, NoSetGroups: true}
}

// own gives path to the account (the server writes its data directory).
func (a *Account) own(path string) error {
	if !a.Switch {
		return nil
	}
	return filepath.Walk(path, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(a.UID), int(a.GID))
	})
}

// Cluster is one PostgreSQL data directory.
type Cluster struct {
	// Dir holds data/ (the cluster) and the socket.
	Dir     string
	Port    int
	Account *Account
	BinDir  string
}

// DataDir is the cluster's data directory.
func (c *Cluster) DataDir() string { return filepath.Join(c.Dir, "data") }

// Initialized reports whether initdb has run.
func (c *Cluster) Initialized() bool {
	_, err := os.Stat(filepath.Join(c.DataDir(), "PG_VERSION"))
	return err == nil
}

// Init runs initdb with the superuser's password (scram-sha-256 for every
// connection, local ones included).
func (c *Cluster) Init(ctx context.Context, superPassword string) error {
	if err := os.MkdirAll(c.Dir, 0o700); err != nil {
		return err
	}
	pwfile := filepath.Join(c.Dir, "initdb-password")
	if err := os.WriteFile(pwfile, []byte(superPassword+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	if err := c.Account.own(c.Dir); err != nil {
		return fmt.Errorf("giving %s to %s: %w", c.Dir, c.Account.Name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "initdb"), "-D", c.DataDir(), "-U", Superuser,
		"--pwfile="+pwfile, "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.Account.Credential()}
	cmd.Dir = c.Dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb in %s as %s: %w\n%s", c.DataDir(), c.Account.Name, err, out)
	}
	// initdb --no-sync saves minutes on slow disks; one sync makes the new
	// cluster as durable as a synced initdb would.
	syscall.Sync()
	return nil
}

// Args are the server's arguments: loopback only, the socket in Dir.
func (c *Cluster) Args() []string {
	return []string{"-D", c.DataDir(), "-p", strconv.Itoa(c.Port), "-h", "127.0.0.1", "-k", c.Dir,
		"-c", "log_destination=stderr", "-c", "logging_collector=off"}
}

// Postgres is the server binary.
func (c *Cluster) Postgres() string { return filepath.Join(c.BinDir, "postgres") }

// DSN is a connection string for user (password may be empty when it
// comes from elsewhere, e.g. a password file).
func (c *Cluster) DSN(userName, password, database string) string {
	u := "postgres://" + userName
	if password != "" {
		u += ":" + password
	}
	return u + "@127.0.0.1:" + strconv.Itoa(c.Port) + "/" + database + "?sslmode=disable&connect_timeout=5"
}

// Ready tries one connection.
func Ready(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// FreePort picks a free loopback port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("choosing a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Server is a throwaway cluster for tests.
type Server struct {
	Cluster
	// Password is the superuser's.
	Password string
	cmd      *exec.Cmd
	exited   chan error
}

// Start creates a cluster in dir and starts it, waiting until it accepts
// connections (within a minute).
func Start(ctx context.Context, dir string) (*Server, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	account, err := ServerAccount()
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	s := &Server{Cluster: Cluster{Dir: dir, Port: port, Account: account, BinDir: bin}, Password: "pw-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	if err := s.Init(ctx, s.Password); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	s.cmd = exec.Command(s.Postgres(), s.Args()...)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: account.Credential(), Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", s.Postgres(), err)
	}
	s.exited = make(chan error, 1)
	go func() { s.exited <- s.cmd.Wait() }()
	deadline := time.Now().Add(time.Minute)
	for {
		err := Ready(ctx, s.DSN(Superuser, s.Password, "postgres"))
		if err == nil {
			return s, nil
		}
		select {
		case werr := <-s.exited:
			log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			return nil, fmt.Errorf("postgres exited (%v) before accepting connections:\n%s", werr, log)
		default:
		}
		if time.Now().After(deadline) {
			s.Stop()
			return nil, fmt.Errorf("postgres on port %d did not accept connections within a minute: %w", port, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// SuperDSN connects as the superuser.
func (s *Server) SuperDSN(database string) string { return s.DSN(Superuser, s.Password, database) }

// Stop asks the server for a fast shutdown and waits up to 30 s, then kills it.
func (s *Server) Stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.exited:
		return nil
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
		return errors.New("postgres did not stop within 30s and was killed")
	}
}

// CreateDatabase creates a database owned by the superuser.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.SuperDSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	return err
}
