package cli

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-id/sigil/internal/trustbundle"
)

// JSON output (docs/cli.md, "JSON output"). Every read command takes
// -output json. Commands that print an API message print its protojson
// with the .proto field names (snake_case), every field present (false, 0,
// "" and [] included, an unset message as null), 64-bit integers as
// strings and bytes as base64, as the proto3 JSON mapping says; printJSON
// writes it. Commands whose answer is not one API message print an
// explicit struct whose field names are documented in docs/cli.md, with
// times in RFC 3339 (UTC); printValue writes it. Both are indented with
// two spaces and end with a newline.

// jsonOptions are the protojson options of every JSON output (printJSON
// uses the same).
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// printValue writes v as indented JSON.
func printValue(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// protoField is one extra top-level field added to a message's JSON.
type protoField struct {
	name  string
	value proto.Message // nil prints null
}

// printJSONWith writes m as printJSON does, with extra top-level fields
// after m's own (for commands that show one message and something about
// it, such as a relationship and the state of its bundle).
func printJSONWith(w io.Writer, m proto.Message, extra ...protoField) error {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		return err
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return err
	}
	obj := bytes.TrimSuffix(compact.Bytes(), []byte("}"))
	for _, f := range extra {
		v := []byte("null")
		if f.value != nil && f.value.ProtoReflect().IsValid() {
			if v, err = jsonOptions.Marshal(f.value); err != nil {
				return err
			}
		}
		if len(obj) > 1 {
			obj = append(obj, ',')
		}
		obj = append(obj, fmt.Sprintf("%q:", f.name)...)
		obj = append(obj, v...)
	}
	obj = append(obj, '}')
	var buf bytes.Buffer
	if err := json.Indent(&buf, obj, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

// x509SVIDJSON is one X.509-SVID in the JSON of `sigil svid fetch`. The
// private key is never printed.
type x509SVIDJSON struct {
	SPIFFEID  string      `json:"spiffe_id"`
	Hint      string      `json:"hint"`
	Serial    string      `json:"serial"`
	NotBefore string      `json:"not_before"`
	NotAfter  string      `json:"not_after"`
	DNSNames  []string    `json:"dns_names"`
	Chain     []chainCert `json:"chain"`
	ChainPEM  string      `json:"chain_pem"`
}

// chainCert is one certificate of an SVID's chain, leaf first.
type chainCert struct {
	Subject  string `json:"subject"`
	Issuer   string `json:"issuer"`
	NotAfter string `json:"not_after"`
}

// bundleJSON is one trust bundle in the JSON of `sigil svid fetch`.
type bundleJSON struct {
	TrustDomain     string `json:"trust_domain"`
	X509Authorities int    `json:"x509_authorities"`
	PEM             string `json:"pem"`
}

// svidFetchJSON is the JSON of `sigil svid fetch`.
type svidFetchJSON struct {
	SVIDs   []x509SVIDJSON `json:"svids"`
	Bundles []bundleJSON   `json:"bundles"`
	// Written lists the files -write wrote (svid, key, bundle), or is null.
	Written *writtenJSON `json:"written"`
}

// writtenJSON names the files `sigil svid fetch -write` wrote.
type writtenJSON struct {
	SVID   string `json:"svid"`
	Key    string `json:"key"`
	Bundle string `json:"bundle"`
}

// jwtSVIDJSON is one JWT-SVID in the JSON of `sigil svid fetch -jwt` and
// `sigil jwt validate`.
type jwtSVIDJSON struct {
	SPIFFEID  string   `json:"spiffe_id"`
	Hint      string   `json:"hint"`
	Audience  []string `json:"audience"`
	ExpiresAt string   `json:"expires_at"`
	Token     string   `json:"token,omitempty"`
}

// rfc3339 renders t in UTC.
func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// newX509SVIDJSON describes s.
func newX509SVIDJSON(s *x509svid.SVID) x509SVIDJSON {
	leaf := s.Certificates[0]
	j := x509SVIDJSON{
		SPIFFEID:  s.ID.String(),
		Hint:      s.Hint,
		Serial:    leaf.SerialNumber.Text(16),
		NotBefore: rfc3339(leaf.NotBefore),
		NotAfter:  rfc3339(leaf.NotAfter),
		DNSNames:  append([]string{}, leaf.DNSNames...),
		ChainPEM:  string(trustbundle.EncodePEM(s.Certificates)),
	}
	for _, c := range s.Certificates {
		j.Chain = append(j.Chain, chainCert{Subject: subjectOf(c), Issuer: c.Issuer.String(), NotAfter: rfc3339(c.NotAfter)})
	}
	return j
}

// newSVIDFetchJSON describes what the Workload API returned.
func newSVIDFetchJSON(x *workloadapi.X509Context) *svidFetchJSON {
	out := &svidFetchJSON{SVIDs: []x509SVIDJSON{}, Bundles: []bundleJSON{}}
	for _, s := range x.SVIDs {
		out.SVIDs = append(out.SVIDs, newX509SVIDJSON(s))
	}
	if x.Bundles != nil {
		for _, b := range x.Bundles.Bundles() {
			out.Bundles = append(out.Bundles, bundleJSON{
				TrustDomain:     b.TrustDomain().Name(),
				X509Authorities: len(b.X509Authorities()),
				PEM:             string(trustbundle.EncodePEM(b.X509Authorities())),
			})
		}
	}
	return out
}

// newJWTSVIDJSON describes s; withToken adds the token itself.
func newJWTSVIDJSON(s *jwtsvid.SVID, withToken bool) jwtSVIDJSON {
	aud := append([]string{}, s.Audience...)
	sort.Strings(aud)
	j := jwtSVIDJSON{SPIFFEID: s.ID.String(), Hint: s.Hint, Audience: aud, ExpiresAt: rfc3339(s.Expiry)}
	if withToken {
		j.Token = s.Marshal()
	}
	return j
}

// printSVIDJSON prints the JSON of `sigil svid fetch`, writing the files
// of -write dir first if dir is set.
func printSVIDJSON(w io.Writer, x *workloadapi.X509Context, dir string) error {
	j := newSVIDFetchJSON(x)
	if dir != "" {
		svid := x.DefaultSVID()
		var bundle []*x509.Certificate
		if x.Bundles != nil {
			if b, ok := x.Bundles.Get(svid.ID.TrustDomain()); ok {
				bundle = b.X509Authorities()
			}
		}
		if err := WriteSVID(dir, svid, bundle); err != nil {
			return err
		}
		j.Written = &writtenJSON{SVID: filepath.Join(dir, "svid.pem"), Key: filepath.Join(dir, "svid.key"), Bundle: filepath.Join(dir, "bundle.pem")}
	}
	return printValue(w, j)
}
