// Command SERVICE is one of the demo's cafe services: a small HTTP server
// that Slipway tests, builds, signs and delivers from this repository.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"time"
)

// serve answers every order.
func serve(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprintf(w, "a cup of SERVICE (%s)\n", brew)
}

func main() {
	addr := ":8080"
	if p := os.Getenv("PORT"); p != "" {
		addr = ":" + p
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", serve)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
