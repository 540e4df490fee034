package releases

import (
	"strconv"
	"strings"
)

// Versions are MAJOR.MINOR.PATCH (semver without pre-release or build
// parts: a box orders what it installs, and "1.2.0-rc1" against "1.2.0"
// is a rule nobody wants to debug in the field). Each part is below
// 65,536, so a version packs into the monotonic number a signed manifest
// carries: major<<32 | minor<<16 | patch. Numbers order exactly like the
// versions they come from.

// ParseVersion returns the packed number of a version, or false.
func ParseVersion(v string) (uint64, bool) {
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return 0, false
	}
	var n uint64
	for _, p := range parts {
		if p == "" || len(p) > 5 || (len(p) > 1 && p[0] == '0') {
			return 0, false
		}
		x, err := strconv.ParseUint(p, 10, 32)
		if err != nil || x > 0xffff {
			return 0, false
		}
		n = n<<16 | x
	}
	return n, n > 0
}
