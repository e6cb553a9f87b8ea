package lab

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
)

// State is what `lab up` records in DIR/lab.json for later commands.
type State struct {
	Ports      Ports               `json:"ports"`
	Git        GitCredentials      `json:"git"`
	Registry   GitCredentials      `json:"registry"`
	Components map[string]*Process `json:"components"`
	// GitReader may fetch from the lab's repositories and push to none.
	GitReader GitCredentials `json:"gitReader"`
	// Network is the real-node lab's network; nil when KWOK simulates the nodes.
	Network *Network `json:"network,omitempty"`
	// Host is the journal of changes to the machine outside the lab
	// directory, in the order they were made; `lab down` undoes them.
	Host []HostChange `json:"host,omitempty"`
	// Images are the lab's own images in its registry, pinned by digest.
	Images map[string]string `json:"images,omitempty"`
	// Clusters are the further clusters the lab runs (ClusterDir).
	Clusters []string `json:"clusters,omitempty"`
	// ControlPlaneOnly marks the lab of a further cluster: no git server,
	// registry or Slipway server.
	ControlPlaneOnly bool `json:"controlPlaneOnly,omitempty"`
	// Monitoring is the lab's Prometheus and Alertmanager; nil without.
	Monitoring *MonitoringState `json:"monitoring,omitempty"`
	// Audit is the audit trail's store and secrets.
	Audit *AuditState `json:"audit,omitempty"`
}

// Ports are chosen free once, then kept so addresses stay stable across restarts.
type Ports struct {
	Etcd, EtcdPeer, APIServer, ControllerManager, Scheduler, KWOK, Git, Registry, Server int
	// Edge is the edge load balancer's status port (on 127.0.0.1).
	Edge int `json:",omitempty"`
}

// RealNodes reports whether the lab runs real nodes rather than KWOK's.
func (s *State) RealNodes() bool { return s.Network != nil }

// serviceHost is the address the API server, the git server and the
// registry listen on: loopback, or the host's address on the lab bridge,
// which the real nodes and their pods reach.
func (s *State) serviceHost() string {
	if s.Network != nil {
		return s.Network.HostIP
	}
	return "127.0.0.1"
}

func (s *State) apiURL() string {
	return "https://" + net.JoinHostPort(s.serviceHost(), strconv.Itoa(s.Ports.APIServer))
}

// recorded reports whether the journal holds change.
func (s *State) recorded(change HostChange) bool {
	for _, c := range s.Host {
		if c.same(change) {
			return true
		}
	}
	return false
}

// GitCredentials protect the lab's git server (and, same shape, its registry).
type GitCredentials struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

const stateFile = "lab.json"

// loadState reads DIR/lab.json; a missing file gives os.ErrNotExist.
func loadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	s := &State{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, stateFile), err)
	}
	if s.Components == nil {
		s.Components = map[string]*Process{}
	}
	return s, nil
}

func (s *State) save(dir string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, stateFile+".tmp")
	// The file holds the git password: owner only.
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, stateFile))
}

func newState() (*State, error) {
	s := &State{Components: map[string]*Process{},
		Git:       GitCredentials{Username: "slipway", Password: randomHex(16)},
		GitReader: GitCredentials{Username: "reader", Password: randomHex(16)},
		Registry:  GitCredentials{Username: "slipway", Password: randomHex(16)}}
	ports := []*int{&s.Ports.Etcd, &s.Ports.EtcdPeer, &s.Ports.APIServer, &s.Ports.ControllerManager,
		&s.Ports.Scheduler, &s.Ports.KWOK, &s.Ports.Git, &s.Ports.Registry, &s.Ports.Server, &s.Ports.Edge}
	// Hold every listener until all are chosen so no two ports collide.
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for _, p := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("choosing a free port: %w", err)
		}
		held = append(held, l)
		*p = l.Addr().(*net.TCPAddr).Port
	}
	return s, nil
}

// upgrade fills in what a lab directory made by an earlier version lacks
// (the registry came later), so `lab up` keeps its data instead of asking
// for a purge. It reports whether anything changed.
func (s *State) upgrade() (bool, error) {
	changed := false
	if s.GitReader.Password == "" {
		s.GitReader = GitCredentials{Username: "reader", Password: randomHex(16)}
		changed = true
	}
	if s.Registry.Password == "" {
		s.Registry = GitCredentials{Username: "slipway", Password: randomHex(16)}
		changed = true
	}
	if s.Ports.Registry == 0 {
		taken := map[int]bool{s.Ports.Etcd: true, s.Ports.EtcdPeer: true, s.Ports.APIServer: true, s.Ports.ControllerManager: true,
			s.Ports.Scheduler: true, s.Ports.KWOK: true, s.Ports.Git: true, s.Ports.Server: true}
		for s.Ports.Registry == 0 || taken[s.Ports.Registry] {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return false, fmt.Errorf("choosing a free port for the registry: %w", err)
			}
			s.Ports.Registry = l.Addr().(*net.TCPAddr).Port
			l.Close()
		}
		changed = true
	}
	return changed, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// ErrNotUp means the lab directory has no state: `lab up` never ran or `lab down --purge` did.
var ErrNotUp = errors.New("the lab is not set up (run `slipway lab up`)")
