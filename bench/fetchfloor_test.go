package main

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The floor server answers go-spiffe's own client, call after call on one
// connection (the frames it writes again and again must keep the client's
// HPACK table and flow-control windows in step), and only FetchX509SVID.
func TestFloorFetchServerAnswersGoSpiffe(t *testing.T) {
	frames, err := newFloorFrames()
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "floor.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() { _ = frames.serveListener(l) }()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// More calls than one connection window holds of responses (64 KiB /
	// ~1 KiB), so the client's window updates are needed and used.
	for i := 0; i < 300; i++ {
		svid, err := client.FetchX509SVID(ctx)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if got, want := svid.ID.String(), "spiffe://"+td.Name()+"/bench/raw"; got != want {
			t.Fatalf("call %d: SVID %s, want %s", i, got, want)
		}
		if len(svid.Certificates) != 1 || svid.PrivateKey == nil {
			t.Fatalf("call %d: %d certificates, key %v", i, len(svid.Certificates), svid.PrivateKey != nil)
		}
	}
	if _, err := client.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "floor"}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("FetchJWTSVID: %v, want Unimplemented", err)
	}
	// The connection still serves after the refused call.
	if _, err := client.FetchX509SVID(ctx); err != nil {
		t.Fatalf("after FetchJWTSVID: %v", err)
	}
}
