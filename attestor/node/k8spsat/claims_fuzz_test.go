package k8spsat

import (
	"encoding/json"
	"strings"
	"testing"
)

// FuzzK8sPSATClaims feeds arbitrary claim sets (the payload of a token
// whose signature verified) to identityFromClaims. Invariants: no panic;
// an identity is returned only for a service account token bound to a
// pod whose subject names its namespace and service account, and every
// field comes from the kubernetes.io claim.
func FuzzK8sPSATClaims(f *testing.F) {
	for _, s := range []string{
		`{"sub":"system:serviceaccount:sigil:sigil-agent","kubernetes.io":{"namespace":"sigil","serviceaccount":{"name":"sigil-agent","uid":"u"},"pod":{"name":"p","uid":"pu"},"node":{"name":"n","uid":"nu"}}}`,
		`{"sub":"system:serviceaccount:sigil:sigil-agent","kubernetes.io":{"namespace":"sigil","serviceaccount":{"name":"sigil-agent"}}}`,
		`{"sub":"system:serviceaccount:a:b:c","kubernetes.io":{"namespace":"a","serviceaccount":{"name":"b:c"},"pod":{"name":"p","uid":"u"}}}`,
		`{"kubernetes.io":null}`, `{}`, `[]`, `null`, `{"kubernetes.io":{"pod":{}}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		id, err := identityFromClaims(raw)
		if err != nil {
			if id != (Identity{}) {
				t.Fatal("an identity with an error")
			}
			return
		}
		var c k8sClaims
		if json.Unmarshal(raw, &c) != nil || c.K8s == nil {
			t.Fatalf("accepted %q, which has no kubernetes.io claim", raw)
		}
		if id.Namespace == "" || id.ServiceAccount == "" || id.PodName == "" || id.PodUID == "" {
			t.Fatalf("accepted an incomplete identity %+v", id)
		}
		if c.Subject != "system:serviceaccount:"+id.Namespace+":"+id.ServiceAccount || id.Namespace != c.K8s.Namespace ||
			id.ServiceAccount != c.K8s.ServiceAccount.Name || id.PodName != c.K8s.Pod.Name || id.PodUID != c.K8s.Pod.UID {
			t.Fatalf("identity %+v does not come from %q", id, raw)
		}
		if strings.Contains(id.Namespace, ":") || strings.Contains(id.ServiceAccount, ":") {
			t.Fatalf("a name with a colon: %+v", id)
		}
		if c.K8s.Node == nil && (id.NodeName != "" || id.NodeUID != "") {
			t.Fatalf("a node from nowhere: %+v", id)
		}
	})
}
