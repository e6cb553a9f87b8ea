package gitserver

import (
	"errors"
	"fmt"
	"net"
	"sync"
)

// Staller is a TCP server that accepts connections and never answers, the
// way a git server behind a black-holed route or a hung proxy behaves. Tests
// point clients at it to prove that their deadlines fire.
type Staller struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns []net.Conn
}

// NewStaller listens on a free port of 127.0.0.1.
func NewStaller() (*Staller, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("gitserver: staller: listen on 127.0.0.1: %w", err)
	}
	s := &Staller{ln: ln}
	s.wg.Go(s.accept)
	return s, nil
}

// accept holds every connection open without reading from it, until Close.
func (s *Staller) accept() {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns = append(s.conns, conn)
		s.mu.Unlock()
	}
}

// URL returns an http URL of the staller, for use as a repository URL.
func (s *Staller) URL() string { return "http://" + s.ln.Addr().String() }

// Close stops listening and drops the connections held.
func (s *Staller) Close() error {
	err := s.ln.Close()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		err = errors.Join(err, c.Close())
	}
	s.conns = nil
	if err != nil {
		return fmt.Errorf("gitserver: staller: close: %w", err)
	}
	return nil
}
