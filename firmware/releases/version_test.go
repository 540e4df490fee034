package releases

import "testing"

func TestParseVersion(t *testing.T) {
	ok := []string{"0.0.1", "1.0.0", "1.2.3", "10.0.0", "65535.65535.65535"}
	for _, v := range ok {
		if _, good := ParseVersion(v); !good {
			t.Errorf("%s refused", v)
		}
	}
	for _, v := range []string{"", "1", "1.2", "1.2.3.4", "01.2.3", "1.2.x", "1.2.3-rc1", "65536.0.0", "0.0.0", "-1.2.3", "1..3"} {
		if _, good := ParseVersion(v); good {
			t.Errorf("%s accepted", v)
		}
	}
	t.Run("OKOrder", func(t *testing.T) {
		order := []string{"0.0.1", "0.1.0", "0.9.65535", "1.0.0", "1.0.10", "1.2.0", "1.10.0", "2.0.0"}
		prev := uint64(0)
		for _, v := range order {
			n, _ := ParseVersion(v)
			if n <= prev {
				t.Errorf("%s packs to %d, not above the previous %d", v, n, prev)
			}
			prev = n
		}
	})
}
