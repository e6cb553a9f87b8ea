// Command SERVICE is one of the demo's cafe services: a small HTTP server
// that Slipway tests, builds, signs and delivers from this repository.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

// drainDelay is how long the service keeps serving after it is asked to
// stop, while the cluster stops sending it new requests.
const drainDelay = 5 * time.Second

// serve answers every order, naming the pod and the node that served it
// (POD_NAME and NODE_NAME, from the Kubernetes Downward API).
func serve(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprintf(w, "a cup of SERVICE (%s) from pod %s on node %s\n", brew, env("POD_NAME"), env("NODE_NAME"))
}

func env(name string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return "unknown"
}

// handler serves orders and health; once draining, health fails so that
// no new traffic is sent while the orders in flight finish.
func handler(draining *atomic.Bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/", serve)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

func main() {
	addr := ":8080"
	if p := os.Getenv("PORT"); p != "" {
		addr = ":" + p
	}
	var draining atomic.Bool
	srv := &http.Server{Addr: addr, Handler: handler(&draining), ReadHeaderTimeout: 5 * time.Second}
	stop, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		log.Fatal(err)
	case <-stop.Done():
	}
	draining.Store(true)
	time.Sleep(drainDelay)
	ctx, cancelShutdown := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelShutdown()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
