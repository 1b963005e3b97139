package ca

// Operator certificate templates (go.step.sm/crypto/x509util): what an
// operator may add to the X.509-SVIDs and CA certificates Sigil mints, and
// the SPIFFE rules Sigil enforces on the result.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strings"
	"text/template"
	"text/template/parse"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.step.sm/crypto/x509util"
)

// MaxTemplateSize bounds the text of a certificate template, and what one
// rendering of it may produce, in bytes.
const MaxTemplateSize = 64 << 10

// Template data keys. An X.509-SVID template sees SPIFFEID, TrustDomain,
// Path, PathSegments, DNSNames, EntryID and Subject; a CA template sees
// TrustDomain, TrustDomainID, NodeName and Subject. Subject is the subject
// Sigil would use without a template (x509util's JSON form), so that
// `"subject": {{ toJson .Subject }}` keeps it.
const (
	TemplateKeySPIFFEID      = "SPIFFEID"      // "spiffe://example.org/ns/prod/sa/web"
	TemplateKeyTrustDomain   = "TrustDomain"   // "example.org"
	TemplateKeyTrustDomainID = "TrustDomainID" // "spiffe://example.org"
	TemplateKeyPath          = "Path"          // "/ns/prod/sa/web"
	TemplateKeyPathSegments  = "PathSegments"  // ["ns", "prod", "sa", "web"]
	TemplateKeyDNSNames      = "DNSNames"      // the entry's DNS names
	TemplateKeyEntryID       = "EntryID"       // the registration entry's ID; "" for agent and server SVIDs
	TemplateKeyNodeName      = "NodeName"      // the server's node name
	TemplateKeySubject       = "Subject"       // Sigil's own subject for the certificate
)

// Representative data a template is rendered with when it is parsed.
var (
	sampleSVIDID = spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/workload")
	// The template also applies to agents' and servers' SVIDs, which
	// have neither DNS names nor an entry.
	sampleAgentID  = spiffeid.RequireFromString("spiffe://example.org/sigil/agent/join_token/00000000-0000-4000-8000-000000000000")
	sampleServerID = spiffeid.RequireFromString("spiffe://example.org/sigil/server/server-1")
	sampleDNSNames = []string{"workload.example.org"}
	sampleEntryID  = "00000000-0000-4000-8000-000000000000"
	sampleTD       = spiffeid.RequireTrustDomainFromString("example.org")
	sampleNode     = "server-1"
)

// X509SVIDTemplate is a parsed operator template for X.509-SVIDs (the
// x509util JSON template syntax: Go text/template with the sprig
// functions, as step-ca uses). What it renders is merged into the
// certificate Sigil builds; Sigil's own fields win. It may set:
//
//   - subject (all of it; without one, Sigil's: CN = the first DNS name),
//   - extra DNS SANs (dnsNames, or sans of type dns), added after the
//     entry's,
//   - keyUsage among digitalSignature, keyEncipherment and keyAgreement
//     (added to Sigil's: digitalSignature, plus keyEncipherment for RSA),
//   - extKeyUsage among serverAuth and clientAuth (replacing Sigil's
//     serverAuth+clientAuth),
//   - policyIdentifiers, ocspServer, issuingCertificateURL,
//     crlDistributionPoints, and extra non-critical extensions.
//
// It is refused (when parsed, and again on every certificate) if it sets
// a URI SAN (Sigil sets exactly one: the SPIFFE ID), another kind of SAN
// than DNS, basicConstraints with isCA, another key or extended key usage,
// name constraints, key identifiers, the serial, the validity, the issuer
// or the signature algorithm, a critical extension, or an extension that
// overrides a field Sigil controls (SAN, basic constraints, key usage,
// extended key usage, SKI, AKI, name constraints).
//
// A template that uses no per-certificate data is rendered once, when
// parsed; otherwise it is rendered for each certificate. It is safe for
// concurrent use.
type X509SVIDTemplate struct {
	t *certTemplate
	// static is the rendered template when it uses no data.
	static *overlay
}

// ParseX509SVIDTemplate parses and validates an X.509-SVID template: it
// renders it with representative data (a workload's SPIFFE ID, a DNS
// name, an entry ID), checks what it sets, and signs a trial certificate
// with a throwaway key to check the result against the X.509-SVID rules;
// it also renders and checks it for an agent's and a server's SVID (IDs
// under /sigil/agent/ and /sigil/server/, no DNS name, no entry).
func ParseX509SVIDTemplate(text string) (*X509SVIDTemplate, error) {
	t, err := parseCertTemplate("X.509-SVID template", text)
	if err != nil {
		return nil, err
	}
	x := &X509SVIDTemplate{t: t}
	ov, err := x.render(sampleSVIDID, sampleDNSNames, sampleEntryID)
	if err != nil {
		return nil, err
	}
	if err := trialSVID(ov); err != nil {
		return nil, fmt.Errorf("ca: %s: %w", t.kind, err)
	}
	for _, id := range []spiffeid.ID{sampleAgentID, sampleServerID} {
		if _, err := x.render(id, nil, ""); err != nil {
			return nil, fmt.Errorf("%w (rendering for an SVID like %s)", err, id)
		}
	}
	if !t.usesData {
		x.static = ov
	}
	return x, nil
}

// RendersOnce reports whether the template uses no per-certificate data,
// so that it was rendered once when parsed.
func (x *X509SVIDTemplate) RendersOnce() bool { return x.static != nil }

// render renders the template for one SVID and checks what it sets.
func (x *X509SVIDTemplate) render(id spiffeid.ID, dns []string, entryID string) (*overlay, error) {
	var subject x509util.Subject
	if len(dns) > 0 {
		subject.CommonName = dns[0]
	}
	path := id.Path()
	data := x509util.TemplateData{
		TemplateKeySPIFFEID:     id.String(),
		TemplateKeyTrustDomain:  id.TrustDomain().Name(),
		TemplateKeyPath:         path,
		TemplateKeyPathSegments: strings.Split(strings.TrimPrefix(path, "/"), "/"),
		TemplateKeyDNSNames:     slices.Clone(dns),
		TemplateKeyEntryID:      entryID,
		TemplateKeySubject:      subject,
	}
	cert, err := x.t.render(data)
	if err != nil {
		return nil, err
	}
	ov, err := svidOverlay(cert)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", x.t.kind, err)
	}
	return ov, nil
}

// apply merges the template into base, the X.509-SVID Sigil built for p,
// and checks the result. A nil template returns base unchanged.
func (x *X509SVIDTemplate) apply(base *x509.Certificate, p X509SVIDParams) (*x509.Certificate, error) {
	if x == nil {
		return base, nil
	}
	ov := x.static
	if ov == nil {
		var err error
		if ov, err = x.render(p.SPIFFEID, p.DNSNames, p.EntryID); err != nil {
			return nil, fmt.Errorf("%w (rendering for %s)", err, p.SPIFFEID)
		}
	}
	out := ov.merge(base, x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment|x509.KeyUsageKeyAgreement)
	if err := checkSVIDCertificate(out, p.SPIFFEID); err != nil {
		return nil, fmt.Errorf("ca: %s: certificate for %s: %w", x.t.kind, p.SPIFFEID, err)
	}
	return out, nil
}

// CATemplate is a parsed operator template for this server's CA
// certificates (self-signed, or the subject of the CSR sent to an
// upstream authority). It may set:
//
//   - subject (its serialNumber is always the node name: Sigil tells the
//     CAs of its servers apart by it),
//   - keyUsage among keyCertSign, cRLSign and digitalSignature (added to
//     Sigil's keyCertSign+cRLSign),
//   - basicConstraints only as {"isCA": true} (the path length is
//     Sigil's),
//   - policyIdentifiers, ocspServer, issuingCertificateURL,
//     crlDistributionPoints, and extra non-critical extensions.
//
// It is refused if it sets any SAN (Sigil sets exactly one: the trust
// domain's ID), basicConstraints without isCA, another key usage, an
// extended key usage, name constraints, key identifiers, the serial, the
// validity, the issuer or the signature algorithm, a critical extension,
// or an extension that overrides a field Sigil controls (SAN, basic
// constraints, key usage, extended key usage, SKI, AKI, name
// constraints). It is rendered for each CA certificate (a rare event).
type CATemplate struct {
	t *certTemplate
}

// ParseCATemplate parses and validates a CA template: it renders it with
// representative data (a trust domain, a node name), checks what it sets,
// and self-signs a trial CA certificate with a throwaway key to check the
// result against the rules of a SPIFFE signing certificate.
func ParseCATemplate(text string) (*CATemplate, error) {
	t, err := parseCertTemplate("CA template", text)
	if err != nil {
		return nil, err
	}
	c := &CATemplate{t: t}
	ov, err := c.render(sampleTD, sampleNode)
	if err != nil {
		return nil, err
	}
	if err := trialCA(ov); err != nil {
		return nil, fmt.Errorf("ca: %s: %w", t.kind, err)
	}
	return c, nil
}

// defaultCASubject is the subject of a CA certificate without a template.
func defaultCASubject(node string) pkix.Name {
	return pkix.Name{Organization: []string{"Sigil"}, CommonName: "Sigil CA " + node, SerialNumber: node}
}

// Subject returns the subject of the CA certificate of node in td: the
// template's, with serialNumber set to node, or Sigil's own (O=Sigil,
// CN="Sigil CA <node>", serialNumber=<node>) when the template sets none
// or t is nil. It is the subject of the CSR sent to an upstream authority.
func (t *CATemplate) Subject(td spiffeid.TrustDomain, node string) (pkix.Name, error) {
	if t == nil {
		return defaultCASubject(node), nil
	}
	ov, err := t.render(td, node)
	if err != nil {
		return pkix.Name{}, err
	}
	if ov.subject == nil {
		return defaultCASubject(node), nil
	}
	s := *ov.subject
	s.SerialNumber = node
	return s, nil
}

func (t *CATemplate) render(td spiffeid.TrustDomain, node string) (*overlay, error) {
	def := defaultCASubject(node)
	data := x509util.TemplateData{
		TemplateKeyTrustDomain:   td.Name(),
		TemplateKeyTrustDomainID: td.IDString(),
		TemplateKeyNodeName:      node,
		TemplateKeySubject:       x509util.Subject{Organization: def.Organization, CommonName: def.CommonName, SerialNumber: def.SerialNumber},
	}
	cert, err := t.t.render(data)
	if err != nil {
		return nil, err
	}
	ov, err := caOverlay(cert)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: %w", t.t.kind, err)
	}
	if ov.subject != nil {
		ov.subject.SerialNumber = node
	}
	return ov, nil
}

// apply merges the template into base, the CA certificate Sigil built for
// node in td, and checks the result. A nil template returns base
// unchanged.
func (t *CATemplate) apply(base *x509.Certificate, td spiffeid.TrustDomain, node string) (*x509.Certificate, error) {
	if t == nil {
		return base, nil
	}
	ov, err := t.render(td, node)
	if err != nil {
		return nil, err
	}
	out := ov.merge(base, x509.KeyUsageCertSign|x509.KeyUsageCRLSign|x509.KeyUsageDigitalSignature)
	if err := checkCACertificate(out, td); err != nil {
		return nil, fmt.Errorf("ca: %s: CA certificate: %w", t.t.kind, err)
	}
	return out, nil
}

// certTemplate is a parsed x509util template.
type certTemplate struct {
	kind string // for errors: "X.509-SVID template", "CA template"
	tmpl *template.Template
	// usesData: the template refers to its data or calls a function
	// whose result may change between calls (or that is not known here).
	usesData bool
}

func parseCertTemplate(kind, text string) (*certTemplate, error) {
	if strings.TrimSpace(text) == "" {
		return nil, fmt.Errorf("ca: %s is empty", kind)
	}
	if len(text) > MaxTemplateSize {
		return nil, fmt.Errorf("ca: %s of %d bytes is too large (at most %d)", kind, len(text), MaxTemplateSize)
	}
	funcs := x509util.GetFuncMap()
	// x509util's fail records its message in a variable shared by every
	// execution of a template; this one only returns it, so that one
	// parsed template can render concurrently.
	funcs["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	tmpl, err := template.New(kind).Funcs(funcs).Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("ca: %s: parsing: %w", kind, err)
	}
	t := &certTemplate{kind: kind, tmpl: tmpl}
	for _, tt := range tmpl.Templates() {
		if tt.Tree != nil && nodeUsesData(tt.Tree.Root) {
			t.usesData = true
		}
	}
	return t, nil
}

// render executes the template with data and decodes the result, a JSON
// object of x509util.Certificate (unknown fields are refused).
func (t *certTemplate) render(data x509util.TemplateData) (*x509util.Certificate, error) {
	var buf bytes.Buffer
	if err := t.tmpl.Execute(&limitedWriter{w: &buf, n: MaxTemplateSize}, data); err != nil {
		return nil, fmt.Errorf("ca: %s: rendering: %w", t.kind, err)
	}
	dec := json.NewDecoder(&buf)
	dec.DisallowUnknownFields()
	var cert x509util.Certificate
	if err := dec.Decode(&cert); err != nil {
		return nil, fmt.Errorf("ca: %s: what it renders is not a certificate template (x509util JSON): %w", t.kind, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("ca: %s: what it renders has data after the JSON object", t.kind)
	}
	return &cert, nil
}

// limitedWriter fails a write past n bytes in all.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if len(p) > l.n {
		return 0, fmt.Errorf("renders more than %d bytes", MaxTemplateSize)
	}
	l.n -= len(p)
	return l.w.Write(p)
}

// staticFuncs are the template functions whose result depends on their
// arguments only; a template that calls others (now, uuidv4, randAlpha,
// getHostByName...) is rendered for each certificate.
var staticFuncs = map[string]bool{
	"and": true, "or": true, "not": true, "eq": true, "ne": true, "lt": true, "le": true, "gt": true, "ge": true,
	"len": true, "index": true, "slice": true, "print": true, "printf": true, "println": true,
	"html": true, "js": true, "urlquery": true, "call": false,
	"toJson": true, "toRawJson": true, "toPrettyJson": true, "mustToJson": true, "toString": true,
	"quote": true, "squote": true, "upper": true, "lower": true, "title": true, "trim": true,
	"trimPrefix": true, "trimSuffix": true, "trimAll": true, "replace": true, "join": true,
	"split": true, "splitList": true, "list": true, "dict": true, "default": true, "empty": true,
	"coalesce": true, "ternary": true, "contains": true, "hasPrefix": true, "hasSuffix": true,
	"b64enc": true, "b64dec": true, "cat": true, "nospace": true, "substr": true, "trunc": true,
	"first": true, "last": true, "rest": true, "initial": true, "append": true, "atoi": true,
	"int": true, "int64": true, "add": true, "sub": true, "mul": true, "fail": true,
	"asn1Enc": true, "asn1Marshal": true, "asn1Seq": true, "asn1Set": true,
}

// nodeUsesData reports whether the parse tree under n refers to the
// template's data (., $, .Field) or calls a function not in staticFuncs.
func nodeUsesData(n parse.Node) bool {
	switch n := n.(type) {
	case nil:
		return false
	case *parse.ListNode:
		if n == nil {
			return false
		}
		for _, c := range n.Nodes {
			if nodeUsesData(c) {
				return true
			}
		}
		return false
	case *parse.ActionNode:
		return nodeUsesData(n.Pipe)
	case *parse.PipeNode:
		if n == nil {
			return false
		}
		for _, c := range n.Cmds {
			if nodeUsesData(c) {
				return true
			}
		}
		return false
	case *parse.CommandNode:
		for _, a := range n.Args {
			if nodeUsesData(a) {
				return true
			}
		}
		return false
	case *parse.IdentifierNode:
		return !staticFuncs[n.Ident]
	case *parse.DotNode, *parse.FieldNode:
		return true
	case *parse.VariableNode:
		return len(n.Ident) > 0 && n.Ident[0] == "$"
	case *parse.ChainNode:
		return true
	case *parse.IfNode:
		return nodeUsesData(n.Pipe) || nodeUsesData(n.List) || nodeUsesData(n.ElseList)
	case *parse.RangeNode:
		return nodeUsesData(n.Pipe) || nodeUsesData(n.List) || nodeUsesData(n.ElseList)
	case *parse.WithNode:
		return nodeUsesData(n.Pipe) || nodeUsesData(n.List) || nodeUsesData(n.ElseList)
	case *parse.TemplateNode:
		// The called template is walked on its own; what it is passed
		// is walked here.
		return nodeUsesData(n.Pipe)
	case *parse.TextNode, *parse.CommentNode, *parse.StringNode, *parse.NumberNode,
		*parse.BoolNode, *parse.NilNode, *parse.BreakNode, *parse.ContinueNode:
		return false
	}
	return true // unknown node: assume the worst
}

// overlay is what a rendered template adds to a certificate, checked.
type overlay struct {
	subject     *pkix.Name
	dnsNames    []string
	keyUsage    x509.KeyUsage
	extKeyUsage []x509.ExtKeyUsage
	policies    x509util.PolicyIdentifiers
	ocsp        []string
	issuingURL  []string
	crlDP       []string
	extensions  []pkix.Extension
}

// merge returns a copy of base with the overlay added: base's fields that
// the overlay does not set (serial, validity, public key, URI SAN, basic
// constraints, name constraints, key identifiers) stay as Sigil set them;
// the key usage is base's plus the overlay's (within allowed).
func (ov *overlay) merge(base *x509.Certificate, allowed x509.KeyUsage) *x509.Certificate {
	out := *base
	if ov.subject != nil {
		out.Subject = *ov.subject
	}
	if len(ov.dnsNames) > 0 {
		names := slices.Clone(base.DNSNames)
		for _, n := range ov.dnsNames {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
		out.DNSNames = names
	}
	out.KeyUsage = base.KeyUsage | ov.keyUsage&allowed
	if len(ov.extKeyUsage) > 0 {
		out.ExtKeyUsage = slices.Clone(ov.extKeyUsage)
	}
	if len(ov.policies) > 0 {
		out.Policies, out.PolicyIdentifiers = nil, nil
		ov.policies.Set(&out)
	}
	if len(ov.ocsp) > 0 {
		out.OCSPServer = slices.Clone(ov.ocsp)
	}
	if len(ov.issuingURL) > 0 {
		out.IssuingCertificateURL = slices.Clone(ov.issuingURL)
	}
	if len(ov.crlDP) > 0 {
		out.CRLDistributionPoints = slices.Clone(ov.crlDP)
	}
	if len(ov.extensions) > 0 {
		out.ExtraExtensions = append(slices.Clone(base.ExtraExtensions), ov.extensions...)
	}
	return &out
}

// Extensions whose content Sigil controls; a template may not set them as
// raw extensions.
var controlledExtensions = map[string]string{
	"2.5.29.14": "subjectKeyIdentifier",
	"2.5.29.15": "keyUsage",
	"2.5.29.17": "subjectAltName",
	"2.5.29.19": "basicConstraints",
	"2.5.29.30": "nameConstraints",
	"2.5.29.35": "authorityKeyIdentifier",
	"2.5.29.37": "extKeyUsage",
}

// oidSerialNumber is the subject attribute serialNumber (X.520).
var oidSerialNumber = asn1.ObjectIdentifier{2, 5, 4, 5}

// commonOverlay checks the fields both kinds of template refuse and fills
// in the overlay fields both allow.
func commonOverlay(c *x509util.Certificate) (*overlay, error) {
	switch {
	case len(c.URIs) > 0:
		return nil, fmt.Errorf("sets a URI SAN (%s): Sigil sets exactly one URI SAN, the SPIFFE ID", c.URIs[0])
	case len(c.RawSubject) > 0:
		return nil, errors.New("sets rawSubject: set subject instead")
	case !x509util.Subject(c.Issuer).IsEmpty():
		return nil, errors.New("sets the issuer: it is always the signing CA's subject")
	case c.SerialNumber.Int != nil:
		return nil, errors.New("sets serialNumber: Sigil sets a random serial number")
	case !c.NotBefore.IsZero() || !c.NotAfter.IsZero():
		return nil, errors.New("sets notBefore or notAfter: the validity is Sigil's (its TTLs)")
	case len(c.SubjectKeyID) > 0 || len(c.AuthorityKeyID) > 0:
		return nil, errors.New("sets subjectKeyId or authorityKeyId: Sigil sets the key identifiers")
	case c.NameConstraints != nil:
		return nil, errors.New("sets nameConstraints: Sigil sets the CA's name constraints (URIs of the trust domain, no IP addresses) and SVIDs have none")
	case c.SignatureAlgorithm != 0:
		return nil, errors.New("sets signatureAlgorithm: it follows the CA key")
	case len(c.UnknownExtKeyUsage) > 0:
		return nil, fmt.Errorf("sets the extended key usage %v: an X.509-SVID may have serverAuth and clientAuth only, a CA none", c.UnknownExtKeyUsage)
	}
	ov := &overlay{
		keyUsage:   x509.KeyUsage(c.KeyUsage),
		policies:   c.PolicyIdentifiers,
		ocsp:       c.OCSPServer,
		issuingURL: c.IssuingCertificateURL,
		crlDP:      c.CRLDistributionPoints,
	}
	if !subjectEmpty(c.Subject) {
		var scratch x509.Certificate
		c.Subject.Set(&scratch)
		ov.subject = &scratch.Subject
	}
	for _, list := range [][]string{ov.ocsp, ov.issuingURL, ov.crlDP} {
		for _, u := range list {
			if !printableASCII(u) {
				return nil, fmt.Errorf("URL %q has a character that is not printable ASCII", u)
			}
		}
	}
	seen := make(map[string]bool, len(c.Extensions))
	for _, e := range c.Extensions {
		oid := asn1.ObjectIdentifier(e.ID).String()
		switch {
		case len(e.ID) == 0:
			return nil, errors.New("sets an extension without an id")
		case controlledExtensions[oid] != "":
			return nil, fmt.Errorf("sets the extension %s (%s): Sigil controls it", oid, controlledExtensions[oid])
		case e.Critical:
			return nil, fmt.Errorf("sets the extension %s as critical: only non-critical extensions may be added (a verifier refuses a certificate with a critical extension it does not know)", oid)
		case seen[oid]:
			return nil, fmt.Errorf("sets the extension %s twice", oid)
		}
		seen[oid] = true
		ov.extensions = append(ov.extensions, pkix.Extension{Id: asn1.ObjectIdentifier(slices.Clone(e.ID)), Value: slices.Clone(e.Value)})
	}
	return ov, nil
}

// svidOverlay checks a rendered X.509-SVID template.
func svidOverlay(c *x509util.Certificate) (*overlay, error) {
	ov, err := commonOverlay(c)
	if err != nil {
		return nil, err
	}
	switch {
	case len(c.IPAddresses) > 0:
		return nil, fmt.Errorf("sets an IP address SAN (%s): the CA's name constraints exclude IP addresses; only DNS SANs may be added", c.IPAddresses[0])
	case len(c.EmailAddresses) > 0:
		return nil, fmt.Errorf("sets an email SAN (%s): only DNS SANs may be added", c.EmailAddresses[0])
	case c.BasicConstraints != nil && c.BasicConstraints.IsCA:
		return nil, errors.New("sets basicConstraints with isCA: an X.509-SVID must not be a CA")
	}
	ov.dnsNames = slices.Clone([]string(c.DNSNames))
	for _, san := range c.SANs {
		typ := strings.ToLower(san.Type)
		switch typ {
		case x509util.DNSType, x509util.URIType, x509util.IPType, x509util.EmailType, x509util.AutoType, "":
		default:
			return nil, fmt.Errorf("sets a SAN of type %q: only DNS SANs may be added", san.Type)
		}
		if san.Value == "" {
			return nil, errors.New("sets a SAN with an empty value")
		}
		var scratch x509.Certificate
		san.Set(&scratch)
		switch {
		case len(scratch.URIs) > 0:
			return nil, fmt.Errorf("sets a URI SAN (%s): Sigil sets exactly one URI SAN, the SPIFFE ID", san.Value)
		case len(scratch.IPAddresses) > 0 || typ == x509util.IPType:
			return nil, fmt.Errorf("sets an IP address SAN (%s): the CA's name constraints exclude IP addresses; only DNS SANs may be added", san.Value)
		case len(scratch.EmailAddresses) > 0:
			return nil, fmt.Errorf("sets an email SAN (%s): only DNS SANs may be added", san.Value)
		}
		ov.dnsNames = append(ov.dnsNames, scratch.DNSNames...)
	}
	if err := checkDNSNames(ov.dnsNames); err != nil {
		return nil, fmt.Errorf("extra DNS SANs: %w", err)
	}
	const allowed = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement
	if extra := ov.keyUsage &^ allowed; extra != 0 {
		return nil, fmt.Errorf("sets the key usage %s: an X.509-SVID may have digitalSignature, keyEncipherment and keyAgreement only", keyUsageNames(extra))
	}
	for _, eku := range c.ExtKeyUsage {
		if eku != x509.ExtKeyUsageServerAuth && eku != x509.ExtKeyUsageClientAuth {
			return nil, fmt.Errorf("sets the extended key usage %s: an X.509-SVID may have serverAuth and clientAuth only", extKeyUsageName(eku))
		}
	}
	ov.extKeyUsage = slices.Clone([]x509.ExtKeyUsage(c.ExtKeyUsage))
	return ov, nil
}

// caOverlay checks a rendered CA template.
func caOverlay(c *x509util.Certificate) (*overlay, error) {
	ov, err := commonOverlay(c)
	if err != nil {
		return nil, err
	}
	switch {
	case len(c.DNSNames) > 0 || len(c.IPAddresses) > 0 || len(c.EmailAddresses) > 0 || len(c.SANs) > 0:
		return nil, errors.New("sets a SAN: a CA certificate's only SAN is the trust domain's ID, which Sigil sets")
	case c.BasicConstraints != nil && !c.BasicConstraints.IsCA:
		return nil, errors.New("sets basicConstraints without isCA: a CA certificate must be a CA")
	case c.BasicConstraints != nil && c.BasicConstraints.MaxPathLen != 0:
		return nil, errors.New("sets basicConstraints.maxPathLen: the path length is Sigil's (0, or 1 with intermediates allowed)")
	case len(c.ExtKeyUsage) > 0:
		return nil, errors.New("sets an extended key usage on the CA: it would restrict what the SVIDs it signs may be used for")
	}
	if ov.subject != nil {
		for _, atv := range ov.subject.ExtraNames {
			if atv.Type.Equal(oidSerialNumber) {
				return nil, errors.New("sets the subject's serialNumber in extraNames: a CA's subject serialNumber is the node name, which Sigil sets")
			}
		}
	}
	const allowed = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	if extra := ov.keyUsage &^ allowed; extra != 0 {
		return nil, fmt.Errorf("sets the key usage %s: a CA certificate may have keyCertSign, cRLSign and digitalSignature only", keyUsageNames(extra))
	}
	return ov, nil
}

// checkSVIDCertificate checks the X.509-SVID rules on a certificate
// template about to be signed for id: exactly one URI SAN, id; DNS SANs
// only besides it; not a CA; digitalSignature set and only the key usages
// an X.509-SVID may have; serverAuth and clientAuth only; no name
// constraints; no critical, duplicate or Sigil-controlled extra extension.
func checkSVIDCertificate(c *x509.Certificate, id spiffeid.ID) error {
	switch {
	case len(c.URIs) != 1 || c.URIs[0].String() != id.String():
		return fmt.Errorf("has %d URI SANs, want exactly one: %s", len(c.URIs), id)
	case len(c.IPAddresses) > 0 || len(c.EmailAddresses) > 0:
		return errors.New("has a SAN other than DNS besides the SPIFFE ID")
	case !c.BasicConstraintsValid || c.IsCA:
		return errors.New("is a CA or has no basic constraints: an X.509-SVID must say CA=false")
	case c.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return errors.New("lacks the key usage digitalSignature")
	case c.KeyUsage&^(x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment|x509.KeyUsageKeyAgreement) != 0:
		return fmt.Errorf("has the key usage %s", keyUsageNames(c.KeyUsage&^(x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment|x509.KeyUsageKeyAgreement)))
	case len(c.UnknownExtKeyUsage) > 0:
		return errors.New("has an extended key usage other than serverAuth and clientAuth")
	case hasNameConstraints(c):
		return errors.New("has name constraints")
	case len(c.SubjectKeyId) > 0:
		return errors.New("has a subject key identifier set by the template")
	}
	for _, eku := range c.ExtKeyUsage {
		if eku != x509.ExtKeyUsageServerAuth && eku != x509.ExtKeyUsageClientAuth {
			return fmt.Errorf("has the extended key usage %s", extKeyUsageName(eku))
		}
	}
	if err := checkDNSNames(c.DNSNames); err != nil {
		return err
	}
	return checkExtraExtensions(c.ExtraExtensions)
}

// checkCACertificate checks the rules of a SPIFFE signing certificate on
// a CA certificate template of td: exactly one SAN, the URI of td's ID;
// CA with basic constraints; keyCertSign set and only keyCertSign, cRLSign
// and digitalSignature; no extended key usage; no critical, duplicate or
// Sigil-controlled extra extension.
func checkCACertificate(c *x509.Certificate, td spiffeid.TrustDomain) error {
	switch {
	case len(c.URIs) != 1 || c.URIs[0].String() != td.IDString():
		return fmt.Errorf("has %d URI SANs, want exactly one: %s", len(c.URIs), td.IDString())
	case len(c.DNSNames) > 0 || len(c.IPAddresses) > 0 || len(c.EmailAddresses) > 0:
		return errors.New("has a SAN besides the trust domain ID")
	case !c.BasicConstraintsValid || !c.IsCA:
		return errors.New("is not a CA")
	case c.KeyUsage&x509.KeyUsageCertSign == 0:
		return errors.New("lacks the key usage keyCertSign")
	case c.KeyUsage&^(x509.KeyUsageCertSign|x509.KeyUsageCRLSign|x509.KeyUsageDigitalSignature) != 0:
		return fmt.Errorf("has the key usage %s", keyUsageNames(c.KeyUsage&^(x509.KeyUsageCertSign|x509.KeyUsageCRLSign|x509.KeyUsageDigitalSignature)))
	case len(c.ExtKeyUsage) > 0 || len(c.UnknownExtKeyUsage) > 0:
		return errors.New("has an extended key usage")
	}
	return checkExtraExtensions(c.ExtraExtensions)
}

func hasNameConstraints(c *x509.Certificate) bool {
	return len(c.PermittedDNSDomains) > 0 || len(c.ExcludedDNSDomains) > 0 || len(c.PermittedIPRanges) > 0 ||
		len(c.ExcludedIPRanges) > 0 || len(c.PermittedEmailAddresses) > 0 || len(c.ExcludedEmailAddresses) > 0 ||
		len(c.PermittedURIDomains) > 0 || len(c.ExcludedURIDomains) > 0
}

// checkExtraExtensions refuses extra extensions that are critical,
// duplicated, or override a field Sigil controls.
func checkExtraExtensions(exts []pkix.Extension) error {
	seen := make(map[string]bool, len(exts))
	for _, e := range exts {
		oid := e.Id.String()
		switch {
		case controlledExtensions[oid] != "":
			return fmt.Errorf("has the extra extension %s (%s), which Sigil controls", oid, controlledExtensions[oid])
		case e.Critical:
			return fmt.Errorf("has the critical extra extension %s", oid)
		case seen[oid]:
			return fmt.Errorf("has the extension %s twice", oid)
		}
		seen[oid] = true
	}
	return nil
}

// trialSVID signs a certificate merged from ov with a throwaway CA and
// key, and checks it as X.509-SVID rules demand: what a template renders
// must also encode.
func trialSVID(ov *overlay) error {
	caKey, caCert, err := trialCA0()
	if err != nil {
		return err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("trial key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := time.Now()
	base := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: sampleDNSNames[0]},
		NotBefore:             now,
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{sampleSVIDID.URL()},
		DNSNames:              sampleDNSNames,
		AuthorityKeyId:        caCert.SubjectKeyId,
	}
	tmpl := ov.merge(base, x509.KeyUsageDigitalSignature|x509.KeyUsageKeyEncipherment|x509.KeyUsageKeyAgreement)
	if err := checkSVIDCertificate(tmpl, sampleSVIDID); err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, leafKey.Public(), caKey)
	if err != nil {
		return fmt.Errorf("a trial certificate cannot be made of it: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("a trial certificate does not parse: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("a trial certificate does not verify: %w", err)
	}
	return nil
}

// trialCA signs a CA certificate merged from ov with a throwaway key.
func trialCA(ov *overlay) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("trial key: %w", err)
	}
	base, err := trialCATemplate(key)
	if err != nil {
		return err
	}
	tmpl := ov.merge(base, x509.KeyUsageCertSign|x509.KeyUsageCRLSign|x509.KeyUsageDigitalSignature)
	if err := checkCACertificate(tmpl, sampleTD); err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return fmt.Errorf("a trial CA certificate cannot be made of it: %w", err)
	}
	if _, err := x509.ParseCertificate(der); err != nil {
		return fmt.Errorf("a trial CA certificate does not parse: %w", err)
	}
	return nil
}

// trialCA0 makes a throwaway CA without a template, for trialSVID.
func trialCA0() (*ecdsa.PrivateKey, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("trial key: %w", err)
	}
	tmpl, err := trialCATemplate(key)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("trial CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("trial CA: %w", err)
	}
	return key, cert, nil
}

// trialCATemplate is the CA certificate Sigil self-signs, for the sample
// trust domain and node.
func trialCATemplate(key *ecdsa.PrivateKey) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	ski, err := subjectKeyID(key.Public())
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber:                serial,
		Subject:                     defaultCASubject(sampleNode),
		NotBefore:                   now.Add(-time.Minute),
		NotAfter:                    now.Add(time.Hour),
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLen:                  0,
		MaxPathLenZero:              true,
		PermittedDNSDomainsCritical: true,
		PermittedURIDomains:         []string{sampleTD.Name()},
		ExcludedIPRanges:            []*net.IPNet{{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, {IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
		URIs:                        []*url.URL{sampleTD.ID().URL()},
		SubjectKeyId:                ski,
	}, nil
}

// subjectEmpty reports whether a template's subject has no attribute
// (x509util's Subject.IsEmpty, without encoding it).
func subjectEmpty(s x509util.Subject) bool {
	return len(s.Country)+len(s.Organization)+len(s.OrganizationalUnit)+len(s.Locality)+len(s.Province)+
		len(s.StreetAddress)+len(s.PostalCode)+len(s.SerialNumber)+len(s.CommonName)+len(s.ExtraNames) == 0
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if b := s[i]; b < ' ' || b >= 0x7f {
			return false
		}
	}
	return true
}

var keyUsageBits = []struct {
	bit  x509.KeyUsage
	name string
}{
	{x509.KeyUsageDigitalSignature, "digitalSignature"},
	{x509.KeyUsageContentCommitment, "contentCommitment"},
	{x509.KeyUsageKeyEncipherment, "keyEncipherment"},
	{x509.KeyUsageDataEncipherment, "dataEncipherment"},
	{x509.KeyUsageKeyAgreement, "keyAgreement"},
	{x509.KeyUsageCertSign, "keyCertSign"},
	{x509.KeyUsageCRLSign, "cRLSign"},
	{x509.KeyUsageEncipherOnly, "encipherOnly"},
	{x509.KeyUsageDecipherOnly, "decipherOnly"},
}

// keyUsageNames names the bits of ku: "keyCertSign, cRLSign".
func keyUsageNames(ku x509.KeyUsage) string {
	var names []string
	for _, b := range keyUsageBits {
		if ku&b.bit != 0 {
			names = append(names, b.name)
			ku &^= b.bit
		}
	}
	if ku != 0 {
		names = append(names, fmt.Sprintf("0x%x", int(ku)))
	}
	return strings.Join(names, ", ")
}

// extKeyUsageName names an extended key usage by x509util's JSON name.
func extKeyUsageName(eku x509.ExtKeyUsage) string {
	b, err := json.Marshal(x509util.ExtKeyUsage{eku})
	if err != nil {
		return fmt.Sprintf("%d", int(eku))
	}
	var names []string
	if json.Unmarshal(b, &names) != nil || len(names) != 1 {
		return fmt.Sprintf("%d", int(eku))
	}
	return names[0]
}
