package raftstore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/storepb"
)

func putJWT(kid string, pub []byte, expires time.Time) *storepb.Command {
	return &storepb.Command{Op: &storepb.Command_PutJwtAuthority{PutJwtAuthority: &storepb.PutJWTAuthority{
		TrustDomain: "example.org",
		Authority:   &sigilv1.JWTAuthority{KeyId: kid, PublicKey: pub, ExpiresAt: expires.Unix(), ServerId: "n1"},
	}}}
}

func pubDER(t *testing.T) []byte {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestJWTAuthorityRemoveAndPrune(t *testing.T) {
	tf := newTestFSM(t)
	pub, other := pubDER(t), pubDER(t)
	for name, cmd := range map[string]*storepb.Command{
		"no kid":     putJWT("", pub, t0.Add(time.Hour)),
		"bad key":    putJWT("k1", []byte("junk"), t0.Add(time.Hour)),
		"no expiry":  putJWT("k1", pub, time.Unix(0, 0)),
		"no name":    {Op: &storepb.Command_RemoveAuthority{RemoveAuthority: &storepb.RemoveAuthority{TrustDomain: "example.org"}}},
		"other td":   {Op: &storepb.Command_PruneBundle{PruneBundle: &storepb.PruneBundle{TrustDomain: "other.org"}}},
		"remove td":  {Op: &storepb.Command_RemoveAuthority{RemoveAuthority: &storepb.RemoveAuthority{TrustDomain: "other.org", JwtKeyId: "k1"}}},
		"jwt bad td": {Op: &storepb.Command_PutJwtAuthority{PutJwtAuthority: &storepb.PutJWTAuthority{TrustDomain: "other.org"}}},
	} {
		if got := tf.single(cmd); got != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, got)
		}
	}
	old := makeCert(t, true, t0.Add(time.Hour))
	cur := makeCert(t, true, t0.Add(48*time.Hour))
	for _, c := range []*storepb.Command{
		putJWT("k1", pub, t0.Add(time.Hour)),
		putJWT("k2", other, t0.Add(48*time.Hour)),
		putJWT("k1", pub, t0.Add(time.Hour)), // replace
		putAuthority("example.org", "n1", old),
		putAuthority("example.org", "n1", cur),
	} {
		if got := tf.single(c); got != codes.OK {
			t.Fatalf("put: %v", got)
		}
	}
	if got := tf.single(putJWT("k1", other, t0.Add(time.Hour))); got != codes.AlreadyExists {
		t.Fatalf("reusing a kid for another key: %v", got)
	}
	b, _ := tf.f.reader().Bundle("example.org")
	if len(b.JwtAuthorities) != 2 || len(b.X509Authorities) != 2 {
		t.Fatalf("bundle %v", b)
	}

	// Pruning before anything expired changes nothing.
	seq := b.SequenceNumber
	prune := &storepb.Command{Op: &storepb.Command_PruneBundle{PruneBundle: &storepb.PruneBundle{TrustDomain: "example.org"}}}
	if got := tf.single(prune); got != codes.OK {
		t.Fatal(got)
	}
	if b, _ = tf.f.reader().Bundle("example.org"); b.SequenceNumber != seq {
		t.Fatal("a prune with nothing expired changed the bundle")
	}
	// After an hour, by the command's timestamp, k1 and old go.
	tf.now = t0.Add(time.Hour)
	prune.Timestamp = 0
	if got := tf.single(prune); got != codes.OK {
		t.Fatal(got)
	}
	b, _ = tf.f.reader().Bundle("example.org")
	if len(b.JwtAuthorities) != 1 || b.JwtAuthorities[0].KeyId != "k2" || len(b.X509Authorities) != 1 {
		t.Fatalf("after prune: %v", b)
	}
	remove := &storepb.Command{Op: &storepb.Command_RemoveAuthority{RemoveAuthority: &storepb.RemoveAuthority{
		TrustDomain: "example.org", X509Certificate: cur, JwtKeyId: "k2"}}}
	if got := tf.single(remove); got != codes.OK {
		t.Fatal(got)
	}
	if got := tf.single(remove); got != codes.OK {
		t.Fatalf("removing again: %v", got)
	}
	b, _ = tf.f.reader().Bundle("example.org")
	if len(b.JwtAuthorities)+len(b.X509Authorities) != 0 {
		t.Fatalf("after remove: %v", b)
	}
}
