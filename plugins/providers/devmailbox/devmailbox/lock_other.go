//go:build !unix

package devmailbox

import "os"

// Elsewhere only one process may write a mailbox; the store's mutex covers
// the goroutines of that one.
func lockFile(*os.File, bool) error { return nil }
func unlockFile(*os.File)           {}
