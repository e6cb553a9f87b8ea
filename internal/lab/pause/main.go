// Command pause is the lab's pod sandbox image: it holds a pod's namespaces
// open until the kubelet stops the pod. It exits on SIGINT or SIGTERM and,
// as a pod's first process when the pod shares its process namespace,
// reaps the children that other containers leave behind.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
