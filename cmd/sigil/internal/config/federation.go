package config

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/sigil-id/sigil/federation"
)

// Federation is the server block's `federation { … }` block: the bundle
// endpoint, the refresh bounds and the relationships declared in the file.
// Zero durations mean the server's defaults.
type Federation struct {
	// BundleEndpoint is nil without a bundle_endpoint block.
	BundleEndpoint      *BundleEndpoint
	MinRefresh          time.Duration
	MaxRefresh          time.Duration
	FetchTimeout        time.Duration
	PartnerRefreshBound time.Duration
	// Relationships are the federates_with blocks, in file order.
	Relationships []Relationship
}

// BundleEndpoint is the `bundle_endpoint { … }` block.
type BundleEndpoint struct {
	Address string
	// Profile is federation.ProfileHTTPSSPIFFE (the default) or
	// federation.ProfileHTTPSWeb.
	Profile string
	// CertFile and KeyFile (https_web only) are resolved against the
	// configuration file's directory.
	CertFile, KeyFile string
	RefreshHint       time.Duration
	// At is where the block is written ("file:line").
	At string
}

// Relationship is one `federates_with "<td>" { … }` block.
type Relationship struct {
	TrustDomain       string
	BundleEndpointURL string
	Profile           string
	// EndpointSPIFFEID is set for https_spiffe (default
	// spiffe://<td>/sigil/server) and empty for https_web.
	EndpointSPIFFEID string
	// BundleFile is the bundle_file path resolved against the
	// configuration file's directory ("" when none), and BootstrapBundle
	// its content (a SPIFFE bundle document of TrustDomain), read and
	// checked with federation.Decode when the file is parsed.
	BundleFile      string
	BootstrapBundle []byte
	// At is where the block is written ("file:line").
	At string
}

// MaxConfigRelationships bounds the federates_with blocks of one file:
// the replicated store keeps at most this many relationships
// (raftstore.MaxFederationRelationships).
const MaxConfigRelationships = 256

type hclFederation struct {
	BundleEndpoint      *hclBundleEndpoint `hcl:"bundle_endpoint,block"`
	MinRefresh          string             `hcl:"min_refresh,optional"`
	MaxRefresh          string             `hcl:"max_refresh,optional"`
	FetchTimeout        string             `hcl:"fetch_timeout,optional"`
	PartnerRefreshBound string             `hcl:"partner_refresh_bound,optional"`
	FederatesWith       []hclFederatesWith `hcl:"federates_with,block"`
}

type hclBundleEndpoint struct {
	Address     string `hcl:"address,optional"`
	Profile     string `hcl:"profile,optional"`
	CertFile    string `hcl:"cert_file,optional"`
	KeyFile     string `hcl:"key_file,optional"`
	RefreshHint string `hcl:"refresh_hint,optional"`
}

type hclFederatesWith struct {
	TrustDomain       string `hcl:"trust_domain,label"`
	BundleEndpointURL string `hcl:"bundle_endpoint_url,optional"`
	Profile           string `hcl:"profile,optional"`
	EndpointSPIFFEID  string `hcl:"endpoint_spiffe_id,optional"`
	BundleFile        string `hcl:"bundle_file,optional"`
}

// syntaxBlock is the first block of type typ in body, or nil.
func syntaxBlock(body *hclsyntax.Body, typ string) *hclsyntax.Block {
	if body == nil {
		return nil
	}
	for _, b := range body.Blocks {
		if b.Type == typ {
			return b
		}
	}
	return nil
}

// attrAt is "file:line" of attribute name in b, or of b itself when the
// attribute is not written.
func attrAt(b *hclsyntax.Block, name string) string {
	if a, ok := b.Body.Attributes[name]; ok {
		return pos(a.SrcRange)
	}
	return pos(b.DefRange())
}

// readFederation builds the Federation of the server block sb from its
// decoded federation block raw. filename's directory is the base of
// relative file paths.
func readFederation(filename string, sb *hclsyntax.Block, raw *hclFederation) (*Federation, error) {
	fb := syntaxBlock(sb.Body, "federation")
	if fb == nil {
		return nil, fmt.Errorf("%s: server.federation: block not found", pos(sb.DefRange()))
	}
	dir := filepath.Dir(filename)
	out := &Federation{}
	for _, d := range []struct {
		name string
		src  string
		dst  *time.Duration
	}{
		{"min_refresh", raw.MinRefresh, &out.MinRefresh},
		{"max_refresh", raw.MaxRefresh, &out.MaxRefresh},
		{"fetch_timeout", raw.FetchTimeout, &out.FetchTimeout},
		{"partner_refresh_bound", raw.PartnerRefreshBound, &out.PartnerRefreshBound},
	} {
		if err := setFederationDuration(fb, d.name, d.src, d.dst); err != nil {
			return nil, err
		}
	}
	if out.MinRefresh != 0 && out.MaxRefresh != 0 && out.MinRefresh > out.MaxRefresh {
		return nil, fmt.Errorf("%s: server.federation.min_refresh %s is above max_refresh %s", attrAt(fb, "min_refresh"), out.MinRefresh, out.MaxRefresh)
	}
	if raw.BundleEndpoint != nil {
		ep, err := readBundleEndpoint(dir, syntaxBlock(fb.Body, "bundle_endpoint"), raw.BundleEndpoint)
		if err != nil {
			return nil, err
		}
		out.BundleEndpoint = ep
	}
	var blocks []*hclsyntax.Block
	for _, b := range fb.Body.Blocks {
		if b.Type == "federates_with" {
			blocks = append(blocks, b)
		}
	}
	if len(blocks) != len(raw.FederatesWith) {
		return nil, fmt.Errorf("%s: server.federation: %d federates_with blocks decoded of %d", pos(fb.DefRange()), len(raw.FederatesWith), len(blocks))
	}
	if len(blocks) > MaxConfigRelationships {
		return nil, fmt.Errorf("%s: server.federation: %d federates_with blocks, more than the %d relationships a trust domain may have", pos(blocks[MaxConfigRelationships].DefRange()), len(blocks), MaxConfigRelationships)
	}
	seen := map[string]string{}
	for i, b := range blocks {
		rel, err := readRelationship(dir, b, &raw.FederatesWith[i])
		if err != nil {
			return nil, err
		}
		if first, dup := seen[rel.TrustDomain]; dup {
			return nil, fmt.Errorf("%s: server.federation: a second federates_with %q block (the first is at %s)", rel.At, rel.TrustDomain, first)
		}
		seen[rel.TrustDomain] = rel.At
		out.Relationships = append(out.Relationships, rel)
	}
	return out, nil
}

func setFederationDuration(b *hclsyntax.Block, name, src string, dst *time.Duration) error {
	if src == "" {
		return nil
	}
	v, err := parseDuration(src)
	if err != nil {
		return fmt.Errorf("%s: server.federation.%s: %w", attrAt(b, name), name, err)
	}
	*dst = v
	return nil
}

// resolve makes a relative path relative to dir.
func resolve(dir, path string) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(dir, path)
}

func readBundleEndpoint(dir string, b *hclsyntax.Block, raw *hclBundleEndpoint) (*BundleEndpoint, error) {
	const where = "server.federation.bundle_endpoint"
	ep := &BundleEndpoint{
		Address:  raw.Address,
		Profile:  raw.Profile,
		CertFile: resolve(dir, raw.CertFile),
		KeyFile:  resolve(dir, raw.KeyFile),
		At:       pos(b.DefRange()),
	}
	if raw.Address == "" {
		return nil, fmt.Errorf("%s: %s: address is required (e.g. address = \"0.0.0.0:8443\")", ep.At, where)
	}
	if _, port, err := net.SplitHostPort(raw.Address); err != nil || port == "" {
		return nil, fmt.Errorf("%s: %s.address %q: want host:port, e.g. \"0.0.0.0:8443\"", attrAt(b, "address"), where, raw.Address)
	}
	if ep.Profile == "" {
		ep.Profile = federation.ProfileHTTPSSPIFFE
	}
	switch ep.Profile {
	case federation.ProfileHTTPSSPIFFE:
		for _, k := range []string{"cert_file", "key_file"} {
			if _, ok := b.Body.Attributes[k]; ok {
				return nil, fmt.Errorf("%s: %s.%s: profile %s serves the server's own X.509-SVID: remove %s, or use profile = %q", attrAt(b, k), where, k, federation.ProfileHTTPSSPIFFE, k, federation.ProfileHTTPSWeb)
			}
		}
	case federation.ProfileHTTPSWeb:
		if raw.CertFile == "" || raw.KeyFile == "" {
			return nil, fmt.Errorf("%s: %s: profile %s needs cert_file and key_file (a web PKI certificate chain and its key, PEM)", attrAt(b, "profile"), where, federation.ProfileHTTPSWeb)
		}
	default:
		return nil, fmt.Errorf("%s: %s.profile %q: want %q or %q", attrAt(b, "profile"), where, raw.Profile, federation.ProfileHTTPSSPIFFE, federation.ProfileHTTPSWeb)
	}
	if raw.RefreshHint != "" {
		d, err := parseDuration(raw.RefreshHint)
		if err != nil {
			return nil, fmt.Errorf("%s: %s.refresh_hint: %w", attrAt(b, "refresh_hint"), where, err)
		}
		if d < time.Second {
			return nil, fmt.Errorf("%s: %s.refresh_hint %s: want at least 1s", attrAt(b, "refresh_hint"), where, d)
		}
		ep.RefreshHint = d
	}
	return ep, nil
}

func readRelationship(dir string, b *hclsyntax.Block, raw *hclFederatesWith) (Relationship, error) {
	rel := Relationship{At: pos(b.DefRange())}
	where := fmt.Sprintf("server.federation.federates_with %q", raw.TrustDomain)
	td, err := spiffeid.TrustDomainFromString(raw.TrustDomain)
	if err != nil || strings.Contains(raw.TrustDomain, ":") {
		return rel, fmt.Errorf("%s: %s: want a trust domain name such as \"gcp.example\"", rel.At, where)
	}
	rel.TrustDomain = td.Name()

	if raw.BundleEndpointURL == "" {
		return rel, fmt.Errorf("%s: %s: bundle_endpoint_url is required", rel.At, where)
	}
	if u, err := url.Parse(raw.BundleEndpointURL); err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		return rel, fmt.Errorf("%s: %s.bundle_endpoint_url %q: want an https URL with a host and no user info", attrAt(b, "bundle_endpoint_url"), where, raw.BundleEndpointURL)
	}
	rel.BundleEndpointURL = raw.BundleEndpointURL

	rel.Profile = raw.Profile
	if rel.Profile == "" {
		rel.Profile = federation.ProfileHTTPSSPIFFE
	}
	switch rel.Profile {
	case federation.ProfileHTTPSSPIFFE:
		rel.EndpointSPIFFEID = raw.EndpointSPIFFEID
		if rel.EndpointSPIFFEID == "" {
			rel.EndpointSPIFFEID = "spiffe://" + rel.TrustDomain + "/sigil/server"
		}
		id, err := spiffeid.FromString(rel.EndpointSPIFFEID)
		if err != nil {
			return rel, fmt.Errorf("%s: %s.endpoint_spiffe_id %q: %v", attrAt(b, "endpoint_spiffe_id"), where, raw.EndpointSPIFFEID, err)
		}
		if id.TrustDomain() != td {
			return rel, fmt.Errorf("%s: %s.endpoint_spiffe_id %q is not in trust domain %s", attrAt(b, "endpoint_spiffe_id"), where, raw.EndpointSPIFFEID, rel.TrustDomain)
		}
	case federation.ProfileHTTPSWeb:
		if raw.EndpointSPIFFEID != "" {
			return rel, fmt.Errorf("%s: %s.endpoint_spiffe_id: profile %s authenticates the endpoint with web PKI: remove endpoint_spiffe_id, or use profile = %q", attrAt(b, "endpoint_spiffe_id"), where, federation.ProfileHTTPSWeb, federation.ProfileHTTPSSPIFFE)
		}
	default:
		return rel, fmt.Errorf("%s: %s.profile %q: want %q or %q", attrAt(b, "profile"), where, raw.Profile, federation.ProfileHTTPSSPIFFE, federation.ProfileHTTPSWeb)
	}

	if raw.BundleFile != "" {
		rel.BundleFile = resolve(dir, raw.BundleFile)
		doc, err := readBounded(rel.BundleFile, federation.MaxDocumentSize)
		if err != nil {
			return rel, fmt.Errorf("%s: %s.bundle_file: %w", attrAt(b, "bundle_file"), where, err)
		}
		if _, err := federation.Decode(td, doc); err != nil {
			return rel, fmt.Errorf("%s: %s.bundle_file %s: %w", attrAt(b, "bundle_file"), where, rel.BundleFile, err)
		}
		rel.BootstrapBundle = doc
	}
	return rel, nil
}

// readBounded reads the regular file at path, refusing one larger than
// max bytes or empty.
func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// A FIFO or a device could block or never end: only regular files.
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err // *os.File errors name the path
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes, the limit of a bundle document", path, max)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil, fmt.Errorf("%s is empty", path)
	}
	return b, nil
}

// validate refuses a relationship with the server's own trust
// domain td (known only once the flags are applied).
func (f *Federation) validate(td string) error {
	if f == nil {
		return nil
	}
	for _, r := range f.Relationships {
		if r.TrustDomain == td {
			return fmt.Errorf("%s: server.federation.federates_with %q: that is this server's own trust domain", r.At, r.TrustDomain)
		}
	}
	return nil
}
