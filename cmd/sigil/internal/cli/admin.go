package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/internal/unixsock"
)

// DefaultAdminSocket is where the client commands look for the admin API
// unless told otherwise: the current user's own server's socket under
// $XDG_RUNTIME_DIR/sigil if there is one, else /run/sigil/server/private/admin.sock.
var DefaultAdminSocket = unixsock.ClientSocket(unixsock.AdminSocketName)

// rpcTimeout bounds each admin call.
const rpcTimeout = 30 * time.Second

// adminOpts are the flags every admin client command takes.
type adminOpts struct {
	socket string
	output string
	// remote is a TCP admin endpoint instead of the socket
	// (admin_remote.go); cmd is the command, for its flags.
	remote RemoteAdmin
	cmd    *cobra.Command
}

func addAdminFlags(cmd *cobra.Command) *adminOpts {
	o := &adminOpts{}
	cmd.Flags().StringVar(&o.socket, "socket", DefaultAdminSocket, "path of the server's admin API unix socket")
	cmd.Flags().StringVar(&o.output, "output", "text", "output format: text or json")
	o.cmd = cmd
	o.addRemoteFlags(cmd)
	return o
}

func (o *adminOpts) json() bool { return o.output == "json" }

// AdminConn is an open admin API connection.
type AdminConn struct {
	sigilv1.AdminClient
	socket string // or the address of a TCP admin endpoint
	conn   *grpc.ClientConn
	// closeSource closes the SVID source of a TCP connection.
	closeSource func() error
}

// Close closes the connection.
func (c *AdminConn) Close() {
	c.conn.Close()
	if c.closeSource != nil {
		_ = c.closeSource()
	}
}

// dial checks the flags and connects to the admin socket, or with
// -server-address to a TCP admin endpoint with an admin SVID
// (DialAdminRemote). The socket's directory (0700) is the access control,
// so the connection itself needs no credentials.
func (o *adminOpts) dial() (*AdminConn, error) {
	if o.output != "text" && o.output != "json" {
		return nil, fmt.Errorf("invalid -output %q: want text or json", o.output)
	}
	remote, err := o.remoteFlags()
	if err != nil {
		return nil, err
	}
	if remote {
		ctx := context.Background()
		if o.cmd != nil && o.cmd.Context() != nil {
			ctx = o.cmd.Context()
		}
		return DialAdminRemote(ctx, o.remote)
	}
	return DialAdmin(o.socket)
}

// DialAdmin connects to the admin API on the unix socket at path.
func DialAdmin(path string) (*AdminConn, error) {
	if path == "" {
		return nil, errors.New("admin socket path is empty")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if _, err := os.Stat(abs); err != nil {
		switch {
		case errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("admin socket %s does not exist (is `sigil server` running? set -socket to its admin_socket)", abs)
		case errors.Is(err, os.ErrPermission):
			return nil, fmt.Errorf("admin socket %s: permission denied (run as the user that runs the server)", abs)
		}
		return nil, fmt.Errorf("admin socket %s: %w", abs, err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", abs, err)
	}
	return &AdminConn{AdminClient: sigilv1.NewAdminClient(conn), socket: abs, conn: conn}, nil
}

// call runs one RPC with the per-call timeout.
func call[Req, Resp any](ctx context.Context, fn func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	return fn(ctx, req)
}

// rpcError describes a failed admin call in one line (see RPCError).
func (c *AdminConn) rpcError(what string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %v", what, err)
	}
	switch st.Code() {
	case codes.Unavailable:
		return fmt.Errorf("%s: cannot reach the server on %s: %s", what, c.socket, st.Message())
	case codes.DeadlineExceeded:
		return fmt.Errorf("%s: the server did not answer within %s", what, rpcTimeout)
	}
	return fmt.Errorf("%s: %s", what, statusText(st.Code(), st.Message()))
}

func statusText(code codes.Code, msg string) string {
	if msg == "" {
		return code.String()
	}
	return code.String() + ": " + msg
}

// printJSON writes m as indented protojson with proto field names.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	// protojson's own whitespace is deliberately unstable; indent the
	// compact form so that scripts and diffs see a stable layout.
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}

// formatTime renders a unix-seconds timestamp; 0 is "-".
func formatTime(unix int64) string {
	if unix == 0 {
		return "-"
	}
	return time.Unix(unix, 0).UTC().Format(time.RFC3339)
}

// formatTTL renders a TTL in seconds; 0 means the server default.
func formatTTL(sec int32) string {
	if sec == 0 {
		return "default"
	}
	return (time.Duration(sec) * time.Second).String()
}

// ttlSeconds converts a duration flag to whole seconds.
func ttlSeconds(flag string, d time.Duration) (int32, error) {
	if d < 0 {
		return 0, fmt.Errorf("-%s must not be negative", flag)
	}
	if d%time.Second != 0 {
		return 0, fmt.Errorf("-%s %s: must be a whole number of seconds", flag, d)
	}
	s := d / time.Second
	if s > 1<<31-1 {
		return 0, fmt.Errorf("-%s %s is too long", flag, d)
	}
	return int32(s), nil
}
