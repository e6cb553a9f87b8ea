// Command probe is what a hostile test command runs inside the test step:
// it looks for what the step must not reach and prints what it found.
package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe environ MARKER | read PATH | dial ADDR | get URL | viaproxy URL | pids | status")
		os.Exit(2)
	}
	arg := ""
	if len(os.Args) > 2 {
		arg = os.Args[2]
	}
	switch os.Args[1] {
	case "environ":
		// Every process's environment the step can see.
		matches, _ := filepath.Glob("/proc/[0-9]*/environ")
		for _, m := range matches {
			b, err := os.ReadFile(m)
			if err == nil && bytes.Contains(b, []byte(arg)) {
				fmt.Printf("FOUND %s in %s\n", arg, m)
			}
		}
		fmt.Printf("scanned %d environments\n", len(matches))
	case "read":
		b, err := os.ReadFile(arg)
		if err != nil {
			fmt.Printf("read %s: %v\n", arg, err)
			return
		}
		fmt.Printf("READ %s: %s\n", arg, b)
	case "dial":
		c, err := net.DialTimeout("tcp", arg, 3*time.Second)
		if err != nil {
			fmt.Printf("dial %s: %v\n", arg, err)
			return
		}
		c.Close()
		fmt.Printf("CONNECTED %s\n", arg)
	case "get":
		// http.DefaultClient goes through HTTP_PROXY and HTTPS_PROXY.
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get(arg)
		if err != nil {
			fmt.Printf("get %s: %v\n", arg, err)
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("GOT %s %d %s\n", arg, resp.StatusCode, strings.TrimSpace(string(b)))
	case "viaproxy":
		// Through the proxy whatever NO_PROXY says, as a hostile command
		// would ask it for the host's own services.
		proxy, err := url.Parse(os.Getenv("HTTP_PROXY"))
		if err != nil || proxy.Host == "" {
			fmt.Printf("viaproxy: no HTTP_PROXY (%v)\n", err)
			return
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}}
		resp, err := c.Get(arg)
		if err != nil {
			fmt.Printf("viaproxy %s: %v\n", arg, err)
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("VIAPROXY %s %d %s\n", arg, resp.StatusCode, strings.TrimSpace(string(b)))
	case "pids":
		matches, _ := filepath.Glob("/proc/[0-9]*")
		fmt.Printf("visible processes: %d\n", len(matches))
	case "status":
		b, _ := os.ReadFile("/proc/self/status")
		for _, l := range strings.Split(string(b), "\n") {
			for _, k := range []string{"Uid:", "Gid:", "CapEff:", "CapPrm:", "CapBnd:", "NoNewPrivs:", "Seccomp:"} {
				if strings.HasPrefix(l, k) {
					fmt.Println(l)
				}
			}
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown probe", os.Args[1])
		os.Exit(2)
	}
}
