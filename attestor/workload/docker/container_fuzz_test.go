package docker

import (
	"strings"
	"testing"

	"github.com/sigil-id/sigil/registration"
)

// FuzzParseContainer: ParseContainer never panics; what it accepts has a
// 64-hex Id and a sha256 image id, and every selector made from it is one
// the registry accepts.
func FuzzParseContainer(f *testing.F) {
	f.Add([]byte(dockerPayload(ctrID, initPID)))
	f.Add([]byte(podmanPayload(ctrID, initPID)))
	f.Add([]byte(`{"Id":"` + ctrID + `","Image":"` + imageID + `","Config":{"Labels":{"a:b":"c","":"x"},"Env":["=x","A"]}}`))
	f.Add([]byte(`{"Id":"` + ctrID + `","Config":null}`))
	f.Add([]byte(`{} {}`))
	a, err := New(Config{SocketPath: "/x", APIVersion: "1.41", ProcRoot: "/proc", Timeout: 1, MaxResponseBytes: 4 << 10,
		EnvAllowList: []string{"APP_ROLE", "A", "ODD", "NL"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseContainer(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "docker: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		if !isHex64(c.ID) || !strings.HasPrefix(c.Image, "sha256:") || !isHex64(c.Image[7:]) {
			t.Fatalf("accepted Id %q Image %q", c.ID, c.Image)
		}
		for _, s := range a.selectors(c) {
			if err := registration.ValidateSelectorInput(s); err != nil {
				t.Fatalf("selector %q refused: %v", s.Value, err)
			}
		}
	})
}
