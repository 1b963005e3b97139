package federation

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	gofederation "github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/mtls/mtlstest"
)

// serveHTTPS serves h with TLS config c on loopback until the test ends
// and returns its URL.
func serveHTTPS(t *testing.T, c *tls.Config, h http.Handler) string {
	t.Helper()
	l, url := listen(t)
	srv := &http.Server{Handler: h, TLSConfig: c, ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ServeTLS(l, "", "")
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return url
}

// webServer serves h with a certificate of pki for 127.0.0.1.
func webServer(t *testing.T, pki *webPKI, h http.Handler) string {
	t.Helper()
	certPEM, keyPEM, _ := pki.issue(t)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return serveHTTPS(t, &tls.Config{Certificates: []tls.Certificate{cert}}, h)
}

func webRel(url string) *sigilv1.FederationRelationship {
	return &sigilv1.FederationRelationship{TrustDomain: "a.example", BundleEndpointUrl: url, Profile: ProfileHTTPSWeb}
}

func TestFetchFromGoSpiffeHandler(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	want := testBundle(t, ca, 12, 2)
	doc, err := Encode(want)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := spiffebundle.Parse(tdA, doc)
	if err != nil {
		t.Fatal(err)
	}
	h, err := gofederation.NewHandler(tdA, sb)
	if err != nil {
		t.Fatal(err)
	}

	t.Run(ProfileHTTPSSPIFFE, func(t *testing.T) {
		svid := ca.SVID(endpointIDA, time.Hour)
		url := serveHTTPS(t, tlsconfig.TLSServerConfig(svid), h)
		rel := &sigilv1.FederationRelationship{TrustDomain: "a.example", BundleEndpointUrl: url, Profile: ProfileHTTPSSPIFFE, EndpointSpiffeId: endpointIDA}
		got, err := Fetch(context.Background(), rel, testBundle(t, ca, 1, 0), FetchConfig{})
		if err != nil {
			t.Fatal(err)
		}
		if !Equal(got, want) {
			t.Fatalf("fetched %v, want %v", got, want)
		}
	})
	t.Run(ProfileHTTPSWeb, func(t *testing.T) {
		pki := newWebPKI(t)
		url := webServer(t, pki, h)
		got, err := Fetch(context.Background(), webRel(url), nil, FetchConfig{RootCAs: pki.pool()})
		if err != nil {
			t.Fatal(err)
		}
		if !Equal(got, want) {
			t.Fatalf("fetched %v, want %v", got, want)
		}
		// Another root: refused.
		_, err = Fetch(context.Background(), webRel(url), nil, FetchConfig{RootCAs: newWebPKI(t).pool()})
		wantErr(t, err, `federation: fetch bundle of "a.example" from `+url+": ", "certificate")
	})
}

func TestFetchSPIFFEAuthentication(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	url, _ := serve(t, spiffeEndpoint(t, ca, &bundleSource{b: testBundle(t, ca, 3, 0)}, nil))
	rel := func(id string) *sigilv1.FederationRelationship {
		return &sigilv1.FederationRelationship{TrustDomain: "a.example", BundleEndpointUrl: url, Profile: ProfileHTTPSSPIFFE, EndpointSpiffeId: id}
	}
	if _, err := Fetch(context.Background(), rel(endpointIDA), testBundle(t, ca, 1, 0), FetchConfig{}); err != nil {
		t.Fatal(err)
	}
	prefix := `federation: fetch bundle of "a.example" from ` + url + ": "

	_, err := Fetch(context.Background(), rel("spiffe://a.example/other"), testBundle(t, ca, 1, 0), FetchConfig{})
	wantErr(t, err, prefix, `the endpoint's SVID has SPIFFE ID "spiffe://a.example/sigil/server", want "spiffe://a.example/other"`)

	_, err = Fetch(context.Background(), rel(endpointIDA), testBundle(t, mtlstest.NewCA("a.example"), 1, 0), FetchConfig{})
	wantErr(t, err, prefix, "could not verify leaf certificate")

	_, err = Fetch(context.Background(), rel(endpointIDA), nil, FetchConfig{})
	wantErr(t, err, prefix, `no X.509 authorities of "a.example"`)

	// A bundle older than the one held is refused.
	_, err = Fetch(context.Background(), rel(endpointIDA), testBundle(t, ca, 4, 0), FetchConfig{})
	wantErr(t, err, prefix, "sequence number 3 is below the current bundle's 4")
}

func TestFetchRefuses(t *testing.T) {
	ca := mtlstest.NewCA("a.example")
	pki := newWebPKI(t)
	doc, err := Encode(testBundle(t, ca, 1, 3))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	url := webServer(t, pki, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			_, _ = w.Write(doc)
		case "/slow":
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/slowbody":
			w.WriteHeader(200)
			_, _ = w.Write(doc[:10])
			w.(http.Flusher).Flush()
			select {
			case <-release:
			case <-r.Context().Done():
			}
		case "/500":
			http.Error(w, "boom", http.StatusInternalServerError)
		case "/teapot":
			// A custom reason phrase is not repeated.
			conn, buf, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			_, _ = buf.WriteString("HTTP/1.1 418 " + strings.Repeat("x", 1000) + "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			_ = buf.Flush()
			conn.Close()
		case "/redirect":
			http.Redirect(w, r, "/ok", http.StatusFound)
		case "/huge":
			for range 3 {
				_, _ = w.Write([]byte(strings.Repeat(" ", MaxDocumentSize/2)))
			}
		case "/garbage":
			_, _ = w.Write([]byte("<html>"))
		}
	}))
	base := strings.TrimSuffix(url, "/bundle")
	cfg := FetchConfig{RootCAs: pki.pool(), Timeout: 300 * time.Millisecond}
	if _, err := Fetch(context.Background(), webRel(base+"/ok"), nil, cfg); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"/slow":     "no complete answer within the fetch timeout of 300ms",
		"/slowbody": "read the document: no complete answer within the fetch timeout of 300ms",
		"/500":      "the endpoint answered 500 Internal Server Error, want 200 OK",
		"/redirect": "302 Found (redirects are not followed)",
		"/teapot":   "the endpoint answered 418 I'm a teapot, want 200 OK",
		"/huge":     "larger than the limit of 1048576 bytes",
		"/garbage":  "not a JWKS document",
	} {
		t.Run(path, func(t *testing.T) {
			start := time.Now()
			_, err := Fetch(context.Background(), webRel(base+path), nil, cfg)
			wantErr(t, err, `federation: fetch bundle of "a.example" from `+base+path+": ", want)
			if strings.Contains(err.Error(), "xxxxxxxx") {
				t.Fatalf("error %q repeats the server's reason phrase", err)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %v with a 300ms timeout", d)
			}
		})
	}
	// A smaller MaxSize applies.
	small := cfg
	small.MaxSize = int64(len(doc) - 1)
	_, err = Fetch(context.Background(), webRel(base+"/ok"), nil, small)
	wantErr(t, err, fmt.Sprintf("larger than the limit of %d bytes", len(doc)-1))
	// The caller's context bounds the fetch too.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = Fetch(ctx, webRel(base+"/ok"), nil, cfg)
	wantErr(t, err, "context canceled")
	// Nothing listening.
	l, closed := listen(t)
	l.Close()
	_, err = Fetch(context.Background(), webRel(closed), nil, cfg)
	wantErr(t, err, "connection refused")
	// Not https, unknown profile.
	_, err = Fetch(context.Background(), webRel("http://127.0.0.1/"), nil, cfg)
	wantErr(t, err, "not an https URL")
	rel := webRel(base + "/ok")
	rel.Profile = "ftp"
	_, err = Fetch(context.Background(), rel, nil, cfg)
	wantErr(t, err, `profile "ftp"`)
}
