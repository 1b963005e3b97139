package systemd

import (
	"testing"

	"github.com/sigil-id/sigil/attestor/workload/internal/cgroup"
)

// FuzzUnit: for any cgroup file the shared parser accepts, Unit never
// panics and names only a valid service or scope unit, whose id selector
// the selector type accepts.
func FuzzUnit(f *testing.F) {
	for _, s := range []string{
		"0::/system.slice/nginx.service\n",
		"1:name=systemd:/user.slice/user-1000.slice/session-3.scope\n0::/\n",
		"0::/user.slice/user-1000.slice/user@1000.service/app.slice/x.service\n",
		"0::/docker/abc\n", "0::/a.slice/.service\n", "0::/@x.scope\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := cgroup.ParseProcCgroup(data)
		if err != nil {
			return
		}
		u, ok := Unit(entries)
		if ok != (u != "") {
			t.Fatalf("unit %q ok %v", u, ok)
		}
		if ok && ValidateSelector("id:"+u) != nil {
			t.Fatalf("unit %q is not a valid id selector", u)
		}
	})
}
