package federation

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/mtls/mtlstest"
)

var (
	tdA = spiffeid.RequireTrustDomainFromString("a.example")
	tdB = spiffeid.RequireTrustDomainFromString("b.example")
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	ca, ca2 := mtlstest.NewCA("a.example"), mtlstest.NewCA("a.example")
	b := testBundle(t, ca, 7, 3)
	b.X509Authorities = append(b.X509Authorities, &sigilv1.X509Authority{Certificate: ca2.Cert().Raw, NotAfter: ca2.Cert().NotAfter.Unix()})
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	b.JwtAuthorities = append(b.JwtAuthorities, &sigilv1.JWTAuthority{KeyId: "rsa", PublicKey: pkixKey(t, rsaKey.Public())})
	// Store-set and local-only fields are not part of the document.
	b.ModifyIndex, b.UpdatedAt = 9, 1234
	b.X509Authorities[0].ServerId = "server-1"

	doc, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(tdA, doc)
	if err != nil {
		t.Fatal(err)
	}
	if !Equal(got, b) {
		t.Fatalf("decoded %v, want %v", got, b)
	}
	if got.SequenceNumber != 7 || got.RefreshHint != 300 || len(got.X509Authorities) != 2 || len(got.JwtAuthorities) != 4 {
		t.Fatalf("decoded %v", got)
	}
	for i, a := range got.X509Authorities {
		if a.NotAfter != b.X509Authorities[i].NotAfter || a.ServerId != "" {
			t.Fatalf("X.509 authority %d: %v", i, a)
		}
	}
	for _, j := range got.JwtAuthorities {
		if j.ExpiresAt != 0 || j.ServerId != "" {
			t.Fatalf("JWT authority %v", j)
		}
	}
	// The reference implementation reads it the same way.
	sb, err := spiffebundle.Parse(tdA, doc)
	if err != nil {
		t.Fatal(err)
	}
	seq, _ := sb.SequenceNumber()
	hint, _ := sb.RefreshHint()
	if seq != 7 || hint != 300*time.Second || len(sb.X509Authorities()) != 2 || len(sb.JWTAuthorities()) != 4 {
		t.Fatalf("go-spiffe read seq %d hint %v, %d X.509 and %d JWT authorities", seq, hint, len(sb.X509Authorities()), len(sb.JWTAuthorities()))
	}
	if _, ok := sb.FindJWTAuthority("rsa"); !ok {
		t.Fatal("go-spiffe does not find the RSA key")
	}
}

func TestDecodeKeepsJWTKeyOrder(t *testing.T) {
	b := testBundle(t, mtlstest.NewCA("a.example"), 1, 6)
	doc, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	// Encode writes JWT keys in go-spiffe's (map) order; Decode keeps
	// the document's order, so decoding twice gives the same result.
	first, err := Decode(tdA, doc)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		again, err := Decode(tdA, doc)
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(first, again) {
			t.Fatal("decoding the same document twice gave different bundles")
		}
	}
}

func TestEncodeRefuses(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	for name, tc := range map[string]struct {
		b    *sigilv1.Bundle
		want string
	}{
		"nil":         {nil, "no bundle"},
		"no td":       {&sigilv1.Bundle{X509Authorities: testBundle(t, ca, 1, 0).X509Authorities}, "trust domain"},
		"empty":       {&sigilv1.Bundle{TrustDomain: "a.example"}, "no authorities"},
		"bad cert":    {&sigilv1.Bundle{TrustDomain: "a.example", X509Authorities: []*sigilv1.X509Authority{{Certificate: []byte("x")}}}, "X.509 authority 1"},
		"no kid":      {&sigilv1.Bundle{TrustDomain: "a.example", JwtAuthorities: []*sigilv1.JWTAuthority{{PublicKey: pkixKey(t, newKey(t).Public())}}}, "no key ID"},
		"bad jwt key": {&sigilv1.Bundle{TrustDomain: "a.example", JwtAuthorities: []*sigilv1.JWTAuthority{{KeyId: "k", PublicKey: []byte("x")}}}, `JWT authority "k"`},
		"dup kid": {&sigilv1.Bundle{TrustDomain: "a.example", JwtAuthorities: []*sigilv1.JWTAuthority{
			{KeyId: "k", PublicKey: pkixKey(t, newKey(t).Public())}, {KeyId: "k", PublicKey: pkixKey(t, newKey(t).Public())},
		}}, `duplicate key ID "k"`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Encode(tc.b)
			wantErr(t, err, "federation: encode bundle: ", tc.want)
		})
	}
}

// docWith returns a valid document (one x509-svid key of a.example) with
// the JSON object of keys replaced by keys and extra top-level fields.
func docWith(t *testing.T, keys []map[string]any, extra map[string]any) []byte {
	t.Helper()
	m := map[string]any{"keys": keys}
	for k, v := range extra {
		m[k] = v
	}
	doc, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

// keysOf returns the keys of a valid document of b.
func keysOf(t *testing.T, b *sigilv1.Bundle) []map[string]any {
	t.Helper()
	doc, err := Encode(b)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	return m.Keys
}

func TestDecodeRefuses(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	keys := keysOf(t, testBundle(t, ca, 1, 1)) // [x509-svid, jwt-svid]
	x509Key, jwtKey := keys[0], keys[1]
	with := func(k map[string]any, field string, v any) map[string]any {
		c := make(map[string]any, len(k))
		for kk, vv := range k {
			c[kk] = vv
		}
		if v == nil {
			delete(c, field)
		} else {
			c[field] = v
		}
		return c
	}
	valid := docWith(t, keys, nil)
	if _, err := Decode(tdA, valid); err != nil {
		t.Fatalf("the base document does not decode: %v", err)
	}
	oversized := append(bytes.Clone(valid[:len(valid)-1]), bytes.Repeat([]byte(" "), MaxDocumentSize)...)
	oversized = append(oversized, '}')
	tooMany := make([]map[string]any, MaxAuthorities+1)
	for i := range tooMany {
		tooMany[i] = with(jwtKey, "kid", fmt.Sprintf("k%d", i))
	}
	for name, tc := range map[string]struct {
		doc  []byte
		want string
	}{
		"garbage":        {[]byte("not json"), "not a JWKS document"},
		"empty":          {nil, "not a JWKS document"},
		"array":          {[]byte(`[]`), "not a JWKS document"},
		"oversized":      {oversized, "more than the limit of 1048576"},
		"no keys field":  {[]byte(`{"spiffe_sequence": 1}`), "no keys"},
		"empty key set":  {[]byte(`{"keys": []}`), "no keys"},
		"null keys":      {[]byte(`{"keys": null}`), "no keys"},
		"too many keys":  {docWith(t, tooMany, nil), "1025 keys, more than the limit of 1024"},
		"only unknown":   {docWith(t, []map[string]any{with(jwtKey, "use", "enc"), with(x509Key, "kty", "XYZ")}, nil), "none of the 2 keys is an x509-svid or jwt-svid key of a known type"},
		"no use":         {docWith(t, []map[string]any{with(x509Key, "use", nil)}, nil), "none of the 1 keys"},
		"use a number":   {docWith(t, []map[string]any{with(x509Key, "use", 5)}, nil), "key 1: json: cannot unmarshal number"},
		"jwt no kid":     {docWith(t, []map[string]any{x509Key, with(jwtKey, "kid", nil)}, nil), "key 2: jwt-svid key without kid"},
		"duplicate kid":  {docWith(t, []map[string]any{jwtKey, x509Key, jwtKey}, nil), `key 3: duplicate kid "key-1"`},
		"bad x5c":        {docWith(t, []map[string]any{with(x509Key, "x5c", []string{base64.StdEncoding.EncodeToString([]byte("not a certificate"))})}, nil), "spiffebundle"},
		"no x5c":         {docWith(t, []map[string]any{with(x509Key, "x5c", nil)}, nil), "spiffebundle"},
		"bad jwt key":    {docWith(t, []map[string]any{with(jwtKey, "x", "AAAA")}, nil), "spiffebundle"},
		"symmetric key":  {docWith(t, []map[string]any{{"use": "jwt-svid", "kid": "s", "kty": "oct", "k": "c2VjcmV0"}}, nil), `jwt-svid key "s": unsupported public key`},
		"negative hint":  {docWith(t, keys, map[string]any{"spiffe_refresh_hint": -1}), "negative spiffe_refresh_hint"},
		"negative seq":   {docWith(t, keys, map[string]any{"spiffe_sequence": -1}), "not a JWKS document"},
		"string seq":     {docWith(t, keys, map[string]any{"spiffe_sequence": "1"}), "not a JWKS document"},
		"keys an object": {[]byte(`{"keys": {}}`), "not a JWKS document"},
	} {
		t.Run(name, func(t *testing.T) {
			b, err := Decode(tdA, tc.doc)
			wantErr(t, err, `federation: bundle document of "a.example": `, tc.want)
			if b != nil {
				t.Fatalf("bundle %v with the error", b)
			}
		})
	}
	if _, err := Decode(spiffeid.TrustDomain{}, valid); err == nil {
		t.Fatal("Decode accepted the zero trust domain")
	}
}

func TestDecodeIgnoresUnknownKeys(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	b := testBundle(t, ca, 2, 2)
	keys := keysOf(t, b)
	// Keys of other uses (go-spiffe's experimental wit-svid, "enc") and
	// of unknown key types are ignored (SPIFFE Trust Domain and Bundle
	// 4.1.3, 4.2.1, 4.2.2), wherever they are.
	var jwt map[string]any
	for _, k := range keys {
		if k["use"] == "jwt-svid" {
			jwt = k
		}
	}
	wit := map[string]any{}
	enc := map[string]any{}
	for k, v := range jwt {
		wit[k], enc[k] = v, v
	}
	wit["use"], wit["kid"] = "wit-svid", "key-1"
	enc["use"], enc["kid"] = "enc", "key-1"
	unknownKty := map[string]any{"use": "jwt-svid", "kid": "pq", "kty": "ML-DSA", "pub": "AAAA"}
	doc := docWith(t, append([]map[string]any{wit, unknownKty}, append(keys, enc)...), map[string]any{"spiffe_sequence": 2, "spiffe_refresh_hint": 300})
	got, err := Decode(tdA, doc)
	if err != nil {
		t.Fatal(err)
	}
	if !Equal(got, b) {
		t.Fatalf("decoded %v, want %v", got, b)
	}
}

func TestCheckUpdate(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	cur := testBundle(t, ca, 5, 1)
	doc, err := Encode(testBundle(t, ca, 4, 1))
	if err != nil {
		t.Fatal(err)
	}
	older, err := Decode(tdA, doc)
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		td        spiffeid.TrustDomain
		cur, next *sigilv1.Bundle
		want      string // "" for no error
	}{
		"first":          {tdA, nil, older, ""},
		"same sequence":  {tdA, cur, testBundle(t, ca, 5, 0), ""},
		"newer":          {tdA, cur, testBundle(t, ca, 6, 0), ""},
		"older sequence": {tdA, cur, older, "sequence number 4 is below the current bundle's 5"},
		"wrong td":       {tdB, nil, older, `bundle of "b.example": the bundle is of trust domain "a.example"`},
		"empty":          {tdA, nil, &sigilv1.Bundle{TrustDomain: "a.example"}, "no authorities"},
		"nil":            {tdA, cur, nil, "no bundle"},
	} {
		t.Run(name, func(t *testing.T) {
			err := CheckUpdate(tc.td, tc.cur, tc.next)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantErr(t, err, "federation: ", tc.want)
		})
	}
}

func TestEqual(t *testing.T) {
	ca, ca2 := mtlstest.NewCA("a.example"), mtlstest.NewCA("a.example")
	a := testBundle(t, ca, 3, 2)
	a.X509Authorities = append(a.X509Authorities, &sigilv1.X509Authority{Certificate: ca2.Cert().Raw})
	same := proto.Clone(a).(*sigilv1.Bundle)
	same.ModifyIndex, same.UpdatedAt = 10, 20
	same.X509Authorities[0], same.X509Authorities[1] = same.X509Authorities[1], same.X509Authorities[0]
	same.JwtAuthorities[0], same.JwtAuthorities[1] = same.JwtAuthorities[1], same.JwtAuthorities[0]
	if !Equal(a, same) {
		t.Fatal("reordered authorities and store fields made bundles differ")
	}
	for name, change := range map[string]func(b *sigilv1.Bundle){
		"sequence":     func(b *sigilv1.Bundle) { b.SequenceNumber++ },
		"hint":         func(b *sigilv1.Bundle) { b.RefreshHint++ },
		"td":           func(b *sigilv1.Bundle) { b.TrustDomain = "b.example" },
		"cert":         func(b *sigilv1.Bundle) { b.X509Authorities[1].Certificate = ca.Cert().Raw },
		"cert removed": func(b *sigilv1.Bundle) { b.X509Authorities = b.X509Authorities[:1] },
		"kid":          func(b *sigilv1.Bundle) { b.JwtAuthorities[0].KeyId = "other" },
		"jwt key":      func(b *sigilv1.Bundle) { b.JwtAuthorities[0].PublicKey = pkixKey(t, newKey(t).Public()) },
		"jwt removed":  func(b *sigilv1.Bundle) { b.JwtAuthorities = nil },
	} {
		b := proto.Clone(a).(*sigilv1.Bundle)
		change(b)
		if Equal(a, b) || Equal(b, a) {
			t.Errorf("%s: changed bundle is Equal", name)
		}
	}
	if Equal(a, nil) || !Equal(nil, nil) {
		t.Fatal("nil handling")
	}
}

func TestDecodePEM(t *testing.T) {
	ca, ca2 := mtlstest.NewCA("a.example"), mtlstest.NewCA("a.example")
	certPEM := func(c []byte) string { return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})) }
	data := "# a comment\n" + certPEM(ca.Cert().Raw) + "\n" + certPEM(ca2.Cert().Raw) + certPEM(ca.Cert().Raw)
	b, err := DecodePEM(tdA, []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if b.TrustDomain != "a.example" || len(b.X509Authorities) != 2 || len(b.JwtAuthorities) != 0 ||
		!bytes.Equal(b.X509Authorities[1].Certificate, ca2.Cert().Raw) || b.X509Authorities[0].NotAfter != ca.Cert().NotAfter.Unix() {
		t.Fatalf("bundle %v", b)
	}
	for name, tc := range map[string]struct {
		data, want string
	}{
		"empty":     {"", "no PEM CERTIFICATE block"},
		"text":      {"hello", "no PEM CERTIFICATE block"},
		"key":       {certPEM(ca.Cert().Raw) + string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("k")})), `PEM block 2 is "PRIVATE KEY"`},
		"bad cert":  {certPEM([]byte("x")), "certificate 1"},
		"oversized": {strings.Repeat(" ", MaxDocumentSize+1), "more than the limit"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := DecodePEM(tdA, []byte(tc.data))
			wantErr(t, err, `federation: PEM bundle of "a.example": `, tc.want)
		})
	}
}

func TestValidateRelationship(t *testing.T) {
	ok := func() *sigilv1.FederationRelationship {
		return &sigilv1.FederationRelationship{
			TrustDomain:       "b.example",
			BundleEndpointUrl: "https://b.example:8443/bundle",
			Profile:           ProfileHTTPSSPIFFE,
			EndpointSpiffeId:  "spiffe://b.example/sigil/server",
		}
	}
	if err := ValidateRelationship(tdA, ok()); err != nil {
		t.Fatal(err)
	}
	web := ok()
	web.Profile, web.EndpointSpiffeId = ProfileHTTPSWeb, ""
	if err := ValidateRelationship(tdA, web); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		change func(r *sigilv1.FederationRelationship)
		want   string
	}{
		"no td":          {func(r *sigilv1.FederationRelationship) { r.TrustDomain = "" }, "trust_domain is required"},
		"bad td":         {func(r *sigilv1.FederationRelationship) { r.TrustDomain = "B EXAMPLE" }, `trust_domain "B EXAMPLE"`},
		"td as id":       {func(r *sigilv1.FederationRelationship) { r.TrustDomain = "spiffe://b.example" }, `give the trust domain's name ("b.example")`},
		"local td":       {func(r *sigilv1.FederationRelationship) { r.TrustDomain = "a.example" }, "is the local trust domain"},
		"no url":         {func(r *sigilv1.FederationRelationship) { r.BundleEndpointUrl = "" }, "bundle_endpoint_url: required"},
		"http":           {func(r *sigilv1.FederationRelationship) { r.BundleEndpointUrl = "http://b.example/" }, "not an https URL"},
		"no host":        {func(r *sigilv1.FederationRelationship) { r.BundleEndpointUrl = "https:///bundle" }, "has no host"},
		"user info":      {func(r *sigilv1.FederationRelationship) { r.BundleEndpointUrl = "https://u:secret@b.example/" }, "has user info"},
		"fragment":       {func(r *sigilv1.FederationRelationship) { r.BundleEndpointUrl = "https://b.example/#x" }, "has a fragment"},
		"bad url":        {func(r *sigilv1.FederationRelationship) { r.BundleEndpointUrl = "https://b.example:port/" }, "bundle_endpoint_url"},
		"no profile":     {func(r *sigilv1.FederationRelationship) { r.Profile = "" }, "profile is required"},
		"bad profile":    {func(r *sigilv1.FederationRelationship) { r.Profile = "http" }, `profile "http" is neither`},
		"no id":          {func(r *sigilv1.FederationRelationship) { r.EndpointSpiffeId = "" }, "endpoint_spiffe_id is required"},
		"bad id":         {func(r *sigilv1.FederationRelationship) { r.EndpointSpiffeId = "b.example/x" }, `endpoint_spiffe_id "b.example/x"`},
		"id elsewhere":   {func(r *sigilv1.FederationRelationship) { r.EndpointSpiffeId = "spiffe://c.example/x" }, `is not in trust domain "b.example"`},
		"web with an id": {func(r *sigilv1.FederationRelationship) { r.Profile = ProfileHTTPSWeb }, "endpoint_spiffe_id must be empty"},
	} {
		t.Run(name, func(t *testing.T) {
			r := ok()
			tc.change(r)
			err := ValidateRelationship(tdA, r)
			wantErr(t, err, "federation: ", tc.want)
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("error %q shows the URL's password", err)
			}
		})
	}
	wantErr(t, ValidateRelationship(tdA, nil), "no relationship")
}

func TestNextRefresh(t *testing.T) {
	const s, m, h = time.Second, time.Minute, time.Hour
	for _, tc := range []struct {
		hint, min, max time.Duration
		failures       int
		want           time.Duration
	}{
		{hint: 10 * m, min: s, max: h, want: 10 * m},
		{hint: 0, min: s, max: h, want: 5 * m},                 // no hint: 5m
		{hint: 0, min: 10 * m, max: h, want: 10 * m},           // no hint, min above 5m
		{hint: 0, min: s, max: 2 * m, want: 2 * m},             // no hint, max below 5m
		{hint: 100 * h, min: s, max: h, want: h},               // clamped to max
		{hint: 10 * time.Millisecond, min: s, max: h, want: s}, // clamped to min
		{hint: 10 * m, min: s, max: h, failures: 1, want: s},
		{hint: 10 * m, min: s, max: h, failures: 2, want: 2 * s},
		{hint: 10 * m, min: s, max: h, failures: 4, want: 8 * s},
		{hint: 10 * m, min: s, max: h, failures: 10, want: 512 * s},
		{hint: 10 * m, min: s, max: h, failures: 11, want: 10 * m},   // backoff capped by the hint
		{hint: 10 * m, min: s, max: h, failures: 1000, want: 10 * m}, // no overflow
		{hint: 0, min: s, max: h, failures: 100, want: 5 * m},
		{hint: 30 * s, min: s, max: h, failures: 6, want: 30 * s},
		{hint: m, min: 0, max: 0, want: m}, // defaults
		{hint: 0, min: 0, max: 0, failures: 1, want: DefaultMinRefresh},
		{hint: m, min: 2 * m, max: m, want: 2 * m}, // max below min
	} {
		if got := NextRefresh(tc.hint, tc.min, tc.max, tc.failures); got != tc.want {
			t.Errorf("NextRefresh(%v, %v, %v, %d) = %v, want %v", tc.hint, tc.min, tc.max, tc.failures, got, tc.want)
		}
	}
}
