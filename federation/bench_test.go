package federation

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/sigil-id/sigil/mtls/mtlstest"
)

// BenchmarkDecode decodes a document of 4 X.509 and 4 JWT authorities.
func BenchmarkDecode(b *testing.B) {
	bundle := testBundle(b, mtlstest.NewCA("a.example"), 1, 4)
	for range 3 {
		bundle.X509Authorities = append(bundle.X509Authorities, testBundle(b, mtlstest.NewCA("a.example"), 1, 0).X509Authorities...)
	}
	doc, err := Encode(bundle)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(doc)))
	for b.Loop() {
		if _, err := Decode(tdA, doc); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEndpointHandler serves the cached document (no TLS).
func BenchmarkEndpointHandler(b *testing.B) {
	ca := mtlstest.NewCA("a.example")
	src := &bundleSource{b: testBundle(b, ca, 1, 4)}
	e, err := NewEndpoint(EndpointConfig{Profile: ProfileHTTPSSPIFFE, Bundle: src.get, SVID: func() (*tls.Certificate, error) { return nil, errTest }})
	if err != nil {
		b.Fatal(err)
	}
	h := e.Handler()
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatal(w.Code)
		}
	}
}
