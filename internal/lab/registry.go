package lab

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/go-logr/logr"

	"slipway.dev/slipway/internal/registry"
)

// ServeRegistry runs the lab's OCI registry until ctx ends. In production
// Slipway pushes to the organisation's registry; this one is a convenience.
func (l *Lab) ServeRegistry(ctx context.Context, log logr.Logger) error {
	st, err := loadState(l.Dir)
	if err != nil {
		return err
	}
	if st.Ports.Registry == 0 {
		return fmt.Errorf("lab state in %s predates the registry: run `slipway lab down --purge` and `lab up` again", l.Dir)
	}
	srv, err := registry.New(registry.Config{
		Dir: l.path("registry"), Addr: net.JoinHostPort(st.serviceHost(), strconv.Itoa(st.Ports.Registry)),
		Username: st.Registry.Username, Password: st.Registry.Password,
	})
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	log.Info("registry listening", "host", srv.Host(), "data", l.path("registry"))
	<-ctx.Done()
	return srv.Close()
}
