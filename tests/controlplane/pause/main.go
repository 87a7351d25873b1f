// Command pause is the CRI sandbox ("pause") container's process: it holds the pod's namespaces
// open, reaps orphaned children when it is PID 1, and exits 0 on SIGINT or SIGTERM. It stands in
// for registry.k8s.io/pause, which cannot be pulled here; it is built static, with no deps.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every exited child without blocking, so no zombies pile up in the pod.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
