//go:build !linux

package host

import "os/exec"

// configureCmd has no parent-death signal to set outside Linux; the SDK's
// watch of its parent process stops orphaned plugins there.
func configureCmd(*exec.Cmd, bool) {}

func runPinned(start func() error) (release func(), err error) {
	return func() {}, start()
}
