package workloadapi

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// SDS resource names with a fixed meaning. Any other name is a SPIFFE ID
// (an X.509-SVID of the caller) or a trust domain, as a name
// ("example.org") or an ID ("spiffe://example.org") (that trust domain's
// bundle). The fixed names win over a trust domain of the same name:
// "spiffe://default" names the bundle of a trust domain called
// "default".
const (
	// SDSDefaultSVID names the caller's default X.509-SVID, the first of
	// its identities (the one the Workload API lists first), as a
	// tls_certificate.
	SDSDefaultSVID = "default"
	// SDSRootCA names a validation_context with the agent's own trust
	// domain bundle.
	SDSRootCA = "ROOTCA"
	// SDSAllBundles names a validation_context whose custom validator is
	// Envoy's SPIFFE certificate validator
	// (envoy.tls.cert_validator.spiffe), configured with every bundle the
	// caller may see: the own trust domain's and those of the trust
	// domains its entries federate with, each applied to the peers of its
	// own trust domain only.
	SDSAllBundles = "ALL"
)

// MaxSDSResourceNames caps the resource names one SDS stream may be
// subscribed to at once, and those one FetchSecrets call may ask for. An
// Envoy asks for a few (one SVID and one or two validation contexts per
// listener or cluster); more is refused with InvalidArgument.
const MaxSDSResourceNames = 128

// maxSDSNameLen caps one resource name: a SPIFFE ID is at most 2048 bytes.
const maxSDSNameLen = 2048

// secretTypeURL is the type of every SDS resource.
const secretTypeURL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

// spiffeValidatorName is the name of Envoy's SPIFFE certificate validator
// extension, which validates each peer against the bundle of its own
// trust domain.
const spiffeValidatorName = "envoy.tls.cert_validator.spiffe"

// sdsKind is what a resource name refers to.
type sdsKind uint8

const (
	sdsSVID        sdsKind = iota + 1 // the SVID with a SPIFFE ID
	sdsDefault                        // the first SVID
	sdsRootCA                         // the own trust domain's bundle
	sdsTrustDomain                    // one trust domain's bundle
	sdsAll                            // every bundle, for the SPIFFE validator
)

// sdsName is a parsed resource name.
type sdsName struct {
	kind sdsKind
	id   spiffeid.ID          // of sdsSVID
	td   spiffeid.TrustDomain // of sdsTrustDomain
}

// parseSDSName parses an SDS resource name: one of the fixed names, a
// SPIFFE ID with a path (an SVID), or a trust domain as a name or a
// SPIFFE ID without a path (a bundle).
func parseSDSName(name string) (sdsName, error) {
	switch name {
	case "":
		return sdsName{}, errors.New("empty resource name")
	case SDSDefaultSVID:
		return sdsName{kind: sdsDefault}, nil
	case SDSRootCA:
		return sdsName{kind: sdsRootCA}, nil
	case SDSAllBundles:
		return sdsName{kind: sdsAll}, nil
	}
	if len(name) > maxSDSNameLen {
		return sdsName{}, fmt.Errorf("resource name is %d bytes long, longer than a SPIFFE ID may be (%d)", len(name), maxSDSNameLen)
	}
	if strings.HasPrefix(name, "spiffe://") {
		id, err := spiffeid.FromString(name)
		if err != nil {
			return sdsName{}, fmt.Errorf("resource name %s: %w", quoteName(name), err)
		}
		if id.Path() == "" {
			return sdsName{kind: sdsTrustDomain, td: id.TrustDomain()}, nil
		}
		return sdsName{kind: sdsSVID, id: id}, nil
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return sdsName{}, fmt.Errorf("resource name %s is neither %q, %q, %q, a SPIFFE ID nor a trust domain: %w",
			quoteName(name), SDSDefaultSVID, SDSRootCA, SDSAllBundles, err)
	}
	return sdsName{kind: sdsTrustDomain, td: td}, nil
}

// quoteName quotes a resource name for a message or a log line, cut to a
// readable length.
func quoteName(name string) string {
	const max = 128
	if len(name) > max {
		return fmt.Sprintf("%q...", name[:max])
	}
	return fmt.Sprintf("%q", name)
}

// sdsResource is one secret built for a caller.
type sdsResource struct {
	name    string
	secret  *anypb.Any
	version string // a hash of the secret's encoding
}

// sdsRefusal is a resource name the caller asked for and does not get.
type sdsRefusal struct {
	name   string
	reason string // SDSRefusedInvalid or SDSRefusedNotEntitled
	err    error  // why the name is invalid
}

// Reasons a resource is refused, as counted by an SDSMeter.
const (
	// SDSRefusedInvalid: the name is not a resource name (parseSDSName).
	SDSRefusedInvalid = "invalid"
	// SDSRefusedNotEntitled: the caller holds no SVID with that SPIFFE
	// ID, or may not see that trust domain's bundle (its entries do not
	// federate with it), or the agent has no such bundle.
	SDSRefusedNotEntitled = "not_entitled"
)

// sdsBuilder builds the secrets of one snapshot, each encoding once.
type sdsBuilder struct {
	snap *X509Snapshot
	// pemBundles memoizes the PEM encoding of the snapshot's bundles.
	pemBundles map[spiffeid.TrustDomain][]byte
}

func newSDSBuilder(snap *X509Snapshot) *sdsBuilder {
	return &sdsBuilder{snap: snap}
}

// build returns the resources the caller may have among names, in the
// order of names (duplicates once), and the names it may not have.
func (b *sdsBuilder) build(names []string) ([]sdsResource, []sdsRefusal, error) {
	out := make([]sdsResource, 0, len(names))
	var refused []sdsRefusal
	seen := make(map[string]struct{}, len(names))
	for _, name := range names {
		if _, dup := seen[name]; dup {
			continue
		}
		seen[name] = struct{}{}
		n, err := parseSDSName(name)
		if err != nil {
			refused = append(refused, sdsRefusal{name: name, reason: SDSRefusedInvalid, err: err})
			continue
		}
		secret, err := b.secret(name, n)
		if err != nil {
			return nil, nil, err
		}
		if secret == nil {
			refused = append(refused, sdsRefusal{name: name, reason: SDSRefusedNotEntitled})
			continue
		}
		r, err := newSDSResource(name, secret)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, r)
	}
	return out, refused, nil
}

// wildcardNames are the names a caller that asks for everything gets:
// each of its SVIDs by SPIFFE ID, the fixed names, and every trust domain
// whose bundle it may see, by trust domain ID.
func (b *sdsBuilder) wildcardNames() []string {
	names := make([]string, 0, len(b.snap.Identities)+len(b.snap.Federated)+4)
	for _, id := range b.snap.Identities {
		if s := id.SPIFFEID.String(); !slices.Contains(names, s) {
			names = append(names, s)
		}
	}
	names = append(names, SDSDefaultSVID)
	if b.snap.Bundle != nil {
		names = append(names, SDSRootCA)
	}
	for _, td := range b.trustDomains() {
		names = append(names, td.IDString())
	}
	return append(names, SDSAllBundles)
}

// trustDomains are the trust domains whose bundles the caller may see:
// the own one first, then the federated ones by name.
func (b *sdsBuilder) trustDomains() []spiffeid.TrustDomain {
	tds := make([]spiffeid.TrustDomain, 0, len(b.snap.Federated)+1)
	for td, bundle := range b.snap.Federated {
		if bundle != nil && (b.snap.Bundle == nil || td != b.snap.Bundle.TrustDomain()) {
			tds = append(tds, td)
		}
	}
	slices.SortFunc(tds, func(a, b spiffeid.TrustDomain) int { return strings.Compare(a.Name(), b.Name()) })
	if b.snap.Bundle != nil {
		tds = slices.Insert(tds, 0, b.snap.Bundle.TrustDomain())
	}
	return tds
}

// bundle returns the bundle of td that the caller may see, or nil.
func (b *sdsBuilder) bundle(td spiffeid.TrustDomain) *x509bundle.Bundle {
	if b.snap.Bundle != nil && b.snap.Bundle.TrustDomain() == td {
		return b.snap.Bundle
	}
	return b.snap.Federated[td]
}

// bundlePEM is the PEM encoding of td's bundle, or nil when the caller may
// not see it (or it holds no X.509 authority).
func (b *sdsBuilder) bundlePEM(td spiffeid.TrustDomain) []byte {
	if pemBytes, ok := b.pemBundles[td]; ok {
		return pemBytes
	}
	var out []byte
	if bundle := b.bundle(td); bundle != nil {
		out = pemCerts(bundle.X509Authorities())
	}
	if b.pemBundles == nil {
		b.pemBundles = make(map[spiffeid.TrustDomain][]byte)
	}
	b.pemBundles[td] = out
	return out
}

// secret builds the secret named name (parsed as n), or returns nil when
// the caller may not have it.
func (b *sdsBuilder) secret(name string, n sdsName) (*tlsv3.Secret, error) {
	switch n.kind {
	case sdsSVID:
		for i := range b.snap.Identities {
			if b.snap.Identities[i].SPIFFEID == n.id {
				return tlsCertificate(name, &b.snap.Identities[i])
			}
		}
		return nil, nil
	case sdsDefault:
		if len(b.snap.Identities) == 0 {
			return nil, nil
		}
		return tlsCertificate(name, &b.snap.Identities[0])
	case sdsRootCA:
		if b.snap.Bundle == nil {
			return nil, nil
		}
		return validationContext(name, b.bundlePEM(b.snap.Bundle.TrustDomain())), nil
	case sdsTrustDomain:
		return validationContext(name, b.bundlePEM(n.td)), nil
	case sdsAll:
		return b.spiffeValidator(name)
	}
	return nil, fmt.Errorf("workloadapi: unknown SDS resource kind %d", n.kind)
}

// tlsCertificate is the secret of one SVID: its chain and its private
// key, both PEM.
func tlsCertificate(name string, id *X509Identity) (*tlsv3.Secret, error) {
	chain, err := id.Certificates()
	if err != nil {
		return nil, err
	}
	key := id.KeyDER
	if len(key) == 0 {
		if id.PrivateKey == nil {
			return nil, fmt.Errorf("workloadapi: entry %s: no private key", id.EntryID)
		}
		if key, err = x509.MarshalPKCS8PrivateKey(id.PrivateKey); err != nil {
			return nil, fmt.Errorf("workloadapi: entry %s: %w", id.EntryID, err)
		}
	}
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inlineBytes(pemCerts(chain)),
			PrivateKey:       inlineBytes(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})),
		}},
	}, nil
}

// validationContext is the secret of a bundle (PEM), or nil when there is
// none.
func validationContext(name string, bundlePEM []byte) *tlsv3.Secret {
	if len(bundlePEM) == 0 {
		return nil
	}
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inlineBytes(bundlePEM),
		}},
	}
}

// spiffeValidator is the secret of every bundle the caller may see, as a
// SPIFFECertValidatorConfig, or nil when there is none.
func (b *sdsBuilder) spiffeValidator(name string) (*tlsv3.Secret, error) {
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, td := range b.trustDomains() {
		if p := b.bundlePEM(td); len(p) > 0 {
			cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{
				Name:        td.Name(),
				TrustBundle: inlineBytes(p),
			})
		}
	}
	if len(cfg.TrustDomains) == 0 {
		return nil, nil
	}
	typed, err := anypb.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("workloadapi: encoding the SPIFFE validator config: %w", err)
	}
	return &tlsv3.Secret{
		Name: name,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: spiffeValidatorName, TypedConfig: typed},
		}},
	}, nil
}

func inlineBytes(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

func pemCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// newSDSResource wraps secret, with a version that changes with its
// content.
func newSDSResource(name string, secret *tlsv3.Secret) (sdsResource, error) {
	enc, err := proto.MarshalOptions{Deterministic: true}.Marshal(secret)
	if err != nil {
		return sdsResource{}, fmt.Errorf("workloadapi: encoding secret %s: %w", quoteName(name), err)
	}
	sum := sha256.Sum256(enc)
	return sdsResource{
		name:    name,
		secret:  &anypb.Any{TypeUrl: secretTypeURL, Value: enc},
		version: hex.EncodeToString(sum[:8]),
	}, nil
}

// sdsVersion is the version of a set of resources: it changes when any
// of them, or the set, does.
func sdsVersion(rs []sdsResource) string {
	h := sha256.New()
	for _, r := range rs {
		h.Write([]byte(r.name))
		h.Write([]byte{0})
		h.Write([]byte(r.version))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
