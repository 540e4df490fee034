//go:build linux

package host

import (
	"os/exec"
	"runtime"
	"sync"
	"syscall"
)

// configureCmd asks the kernel to SIGKILL the plugin when the host dies,
// however it dies: go-plugin's plugins do not notice on their own, and a
// host killed with SIGKILL runs no cleanup.
func configureCmd(cmd *exec.Cmd, deathSignal bool) {
	if deathSignal {
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	}
}

// runPinned runs start, which forks the plugin, on an OS thread reserved
// until release is called. Linux sends the parent-death signal when the
// thread that forked the child exits, not the process; Go may end threads
// (one whose locked goroutine exits), and the plugin would be killed with
// it. Release once the plugin process is gone.
func runPinned(start func() error) (release func(), err error) {
	errc := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		errc <- start()
		<-done
		runtime.UnlockOSThread()
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }, <-errc
}
