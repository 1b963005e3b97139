package k8spsat_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/attestor/node/k8spsat"
)

// FuzzK8sPSATPayload feeds arbitrary payloads to the verifier of an OIDC
// cluster of a fake platform (keys already fetched). Invariants: no panic;
// the payload is not modified; a payload ParsePayload refuses is refused
// with a malformed-evidence error, never a RefusedError; only tokens
// signed by the platform's key are accepted, for the configured cluster;
// no error echoes the token.
func FuzzK8sPSATPayload(f *testing.F) {
	fx := newFixture(f)
	v := fx.verifier(f, fx.oidcCluster("prod"))
	good := fx.p.Token(f, fx.claims())
	if _, err := fx.verify(v, "prod", good); err != nil {
		f.Fatal(err)
	}
	parts := strings.Split(good, ".")
	for _, s := range [][]byte{payload("prod", good), payload("dev", good), payload("prod", parts[0]+"."+parts[1]+".AAAA"),
		payload("prod", parts[0]+".e30."+parts[2]), payload("prod", "a.b.c"), payload("", good), []byte(`{"cluster":"prod","token":null}`),
		[]byte("{}"), []byte(""), []byte(`{"cluster":"prod","token":"eyJhbGciOiJub25lIn0.e30."}`)} {
		f.Add(s)
	}
	pub := &fx.p.Key.PublicKey
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		res, err := v.Verify(context.Background(), state{now: fx.now}, exchange{b})
		if !bytes.Equal(in, b) {
			t.Fatal("Verify modified its payload")
		}
		p, perr := k8spsat.ParsePayload(b)
		var refused *node.RefusedError
		if perr != nil {
			if err == nil || errors.As(err, &refused) {
				t.Fatalf("malformed payload (%v) gave %v", perr, err)
			}
			return
		}
		if err != nil {
			if res != nil {
				t.Fatal("a result with an error")
			}
			if len(p.Token) >= 16 && strings.Contains(err.Error(), p.Token) {
				t.Fatalf("error echoes the token: %v", err)
			}
			return
		}
		jws, jerr := jose.ParseSigned(p.Token, []jose.SignatureAlgorithm{jose.RS256})
		if jerr != nil {
			t.Fatalf("accepted a token that is not RS256: %v", jerr)
		}
		if _, verr := jws.Verify(pub); verr != nil || p.Cluster != "prod" || res.ID != "prod/"+nodeUID {
			t.Fatalf("accepted %q for cluster %q as %q (signature: %v)", p.Token, p.Cluster, res.ID, verr)
		}
	})
}

// FuzzK8sPSATTokenReview feeds arbitrary TokenReview statuses (as the API
// server's JSON) to IdentityFromTokenReview. Invariants: no panic; an
// identity is returned only for an authenticated service account user
// with the audience and a pod name and UID, and its fields come from
// them.
func FuzzK8sPSATTokenReview(f *testing.F) {
	ok, _ := json.Marshal(k8spsat.TokenReviewStatus{Authenticated: true, Audiences: []string{aud},
		User: k8spsat.UserInfo{Username: "system:serviceaccount:sigil:sigil-agent", Extra: map[string][]string{
			k8spsat.ExtraPodName: {podName}, k8spsat.ExtraPodUID: {podUID}, k8spsat.ExtraNodeName: {node1}, k8spsat.ExtraNodeUID: {nodeUID}}}})
	for _, s := range []string{string(ok), `{}`, `{"authenticated":true}`, `{"authenticated":true,"audiences":["sigil-server"],"user":{"username":"system:serviceaccount::"}}`,
		`{"authenticated":true,"audiences":["sigil-server"],"user":{"username":"system:serviceaccount:a:b:c","extra":{"authentication.kubernetes.io/pod-name":["p"],"authentication.kubernetes.io/pod-uid":["u"]}}}`,
		`{"authenticated":false,"error":"x"}`, `null`, `[]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var st k8spsat.TokenReviewStatus
		if json.Unmarshal(b, &st) != nil {
			return
		}
		id, err := k8spsat.IdentityFromTokenReview(st, aud)
		if err != nil {
			if id != (k8spsat.Identity{}) {
				t.Fatal("an identity with an error")
			}
			return
		}
		if !st.Authenticated || !strings.HasPrefix(st.User.Username, "system:serviceaccount:") || id.Namespace == "" || id.ServiceAccount == "" ||
			strings.Contains(id.ServiceAccount, ":") || id.PodName == "" || id.PodUID == "" {
			t.Fatalf("accepted %+v as %+v", st, id)
		}
		if st.User.Username != "system:serviceaccount:"+id.Namespace+":"+id.ServiceAccount || st.User.Extra[k8spsat.ExtraPodName][0] != id.PodName ||
			st.User.Extra[k8spsat.ExtraPodUID][0] != id.PodUID {
			t.Fatalf("identity %+v does not come from %+v", id, st)
		}
		found := false
		for _, a := range st.Audiences {
			found = found || a == aud
		}
		if !found {
			t.Fatalf("accepted without the audience: %+v", st)
		}
	})
}
