//go:build unix

package devmailbox

import (
	"os"
	"syscall"
)

// lockFile takes an advisory lock on f, shared by other processes that
// write to the same mailbox (the app and its workers each run a plugin).
func lockFile(f *os.File, exclusive bool) error {
	how := syscall.LOCK_SH
	if exclusive {
		how = syscall.LOCK_EX
	}
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

func unlockFile(f *os.File) { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
