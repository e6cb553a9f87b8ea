package lab

import (
	"context"
	"errors"
	"net"
	"strconv"

	"github.com/go-logr/logr"

	"slipway.dev/slipway/internal/edge"
)

// EdgePort is where the edge load balancer listens on its address: HTTP's,
// so that its URL is http://EDGE.
const EdgePort = 80

// ServeEdge runs the real-node lab's edge load balancer until ctx ends: it
// stands in for a cloud load balancer, on an address of its own, in front
// of the ingress NodePort of every worker.
func (l *Lab) ServeEdge(ctx context.Context, log logr.Logger) error {
	st, err := loadState(l.Dir)
	if err != nil {
		return err
	}
	if st.Network == nil {
		return errors.New("this lab runs KWOK nodes, which serve no traffic: the edge load balancer needs `slipway lab up --real-nodes`")
	}
	lb, err := edge.New(l.edgeConfig(st, log))
	if err != nil {
		return err
	}
	return lb.Run(ctx)
}

func (l *Lab) edgeConfig(st *State, log logr.Logger) edge.Config {
	var backends []string
	for _, n := range st.Network.Nodes {
		backends = append(backends, net.JoinHostPort(n.IP, strconv.Itoa(IngressNodePort)))
	}
	return edge.Config{
		Listen:   net.JoinHostPort(st.Network.EdgeIP, strconv.Itoa(EdgePort)),
		Backends: backends,
		Source:   st.Network.EdgeIP,
		Status:   edgeStatusAddr(st),
		Log:      log,
	}
}

func edgeStatusAddr(st *State) string {
	return "127.0.0.1:" + strconv.Itoa(st.Ports.Edge)
}
