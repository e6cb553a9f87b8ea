package lab

import "testing"

// TestUpgradeAddsTheRegistry: a lab directory from before the registry
// gets a registry port (free, unlike any other component's) and
// credentials, and keeps everything else.
func TestUpgradeAddsTheRegistry(t *testing.T) {
	old, err := newState()
	if err != nil {
		t.Fatal(err)
	}
	old.Ports.Registry, old.Registry = 0, GitCredentials{}
	before := *old

	changed, err := old.upgrade()
	if err != nil {
		t.Fatal(err)
	}
	if !changed || old.Ports.Registry == 0 || old.Registry.Password == "" || old.Registry.Username == "" {
		t.Fatalf("upgrade = %v, state %+v", changed, old)
	}
	for name, p := range map[string]int{"etcd": old.Ports.Etcd, "apiserver": old.Ports.APIServer, "git": old.Ports.Git, "server": old.Ports.Server} {
		if p == old.Ports.Registry {
			t.Fatalf("the registry got the %s port %d", name, p)
		}
	}
	if old.Git != before.Git || old.Ports.APIServer != before.Ports.APIServer {
		t.Fatalf("upgrade changed what existed: %+v, was %+v", old, before)
	}
	if again, err := old.upgrade(); err != nil || again {
		t.Fatalf("a second upgrade changed something: %v, %v", again, err)
	}
}
