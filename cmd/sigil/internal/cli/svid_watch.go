package cli

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/sigil-id/sigil/svidfiles"
)

// newSVIDWatchCommand returns `sigil svid watch`, which keeps SVID files
// current for a consumer that cannot speak the Workload API.
func newSVIDWatchCommand(defSocket string) *cobra.Command {
	var (
		socket      string
		dir         string
		audiences   []string
		spiffeID    string
		execCmd     string
		sigName     string
		pidFile     string
		stopTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "watch -write DIR [-jwt-audience AUD ...] [-exec CMD [-- ARGS...] | -signal SIG -pid-file FILE]",
		Short: "Keep this process's SVID, bundles and JWT-SVIDs current as files, and restart or signal their consumer on rotation",
		Long: `watch keeps DIR/svid.pem (leaf and intermediates), DIR/svid.key (PKCS#8, 0600),
DIR/bundle.pem, DIR/federated/<trust domain>.pem and DIR/jwt_<audience>.token (0600)
current, each rotation written into a new directory that DIR/current is then
swapped to (see docs/svid-files.md).

With -exec it starts CMD (arguments after --) once the first files are
written, and on each rotation stops it (SIGTERM, then SIGKILL after
-stop-timeout) and starts it again; watch exits with CMD's status if CMD ends
on its own. With -signal and -pid-file it signals the process in the pid file
on each rotation instead. SIGINT and SIGTERM stop watch (and CMD).`,
		Example: `  sigil svid watch -write /run/app/svid -exec /usr/bin/app -- -config /etc/app.conf
  sigil svid watch -write /etc/nginx/svid -signal SIGHUP -pid-file /run/nginx.pid
  sigil svid watch -write /run/app/svid -jwt-audience spiffe://example.org/db`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return errors.New("-write DIR is required")
			}
			if len(args) > 0 && execCmd == "" {
				return fmt.Errorf("unexpected arguments %q: arguments after -- are for the -exec command", args)
			}
			if execCmd != "" && (sigName != "" || pidFile != "") {
				return errors.New("-exec cannot be combined with -signal or -pid-file")
			}
			if (sigName == "") != (pidFile == "") {
				return errors.New("-signal and -pid-file go together")
			}
			if stopTimeout <= 0 {
				return fmt.Errorf("-stop-timeout %v must be positive", stopTimeout)
			}
			var id spiffeid.ID
			if spiffeID != "" {
				var err error
				if id, err = spiffeid.FromString(spiffeID); err != nil {
					return fmt.Errorf("invalid -spiffe-id %q: %v", spiffeID, err)
				}
			}
			if err := svidfiles.CheckAudiences(audiences); err != nil {
				return fmt.Errorf("-jwt-audience: %w", err)
			}
			if socket == "" {
				return errors.New("-socket is empty")
			}
			addr, path, err := workloadAddr(socket)
			if err != nil {
				return fmt.Errorf("invalid -socket %q: %v", socket, err)
			}
			if path != "" {
				if _, err := os.Stat(path); err != nil {
					return fmt.Errorf("Workload API socket %s: %v (is `sigil agent` running? set -socket or SPIFFE_ENDPOINT_SOCKET)", path, err)
				}
			}
			log := watchLogger(cmd)
			var notifier svidfiles.Notifier
			switch {
			case execCmd != "":
				notifier = &svidfiles.Exec{
					Command:     append([]string{execCmd}, args...),
					Stdin:       os.Stdin,
					Stdout:      cmd.OutOrStdout(),
					Stderr:      cmd.ErrOrStderr(),
					StopTimeout: stopTimeout,
					Logger:      log,
				}
			case sigName != "":
				sig, err := svidfiles.ParseSignal(sigName)
				if err != nil {
					return fmt.Errorf("-signal: %w", err)
				}
				notifier = &svidfiles.Signal{Signal: sig, PIDFile: pidFile, Logger: log}
			}
			w, err := svidfiles.NewWriter(dir, svidfiles.NoOwner)
			if err != nil {
				return fmt.Errorf("-write: %w", err)
			}

			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			client, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
			if err != nil {
				return fmt.Errorf("Workload API client for %s: %v", addr, err)
			}
			defer client.Close()
			log.Info("watching the Workload API", zap.String("socket", addr), zap.String("dir", w.Dir()))
			err = svidfiles.Run(ctx, svidfiles.Config{
				Writer:       w,
				SPIFFEID:     id,
				JWTAudiences: audiences,
				Notifier:     notifier,
				Logger:       log,
			}, &svidfiles.WorkloadAPISource{Client: client, Logger: log})
			var exit *svidfiles.ExitError
			if errors.As(err, &exit) {
				code := exit.Code
				if code == 0 {
					code = 1 // watch is meant to run for good
				}
				return &ExitError{Code: code, Err: fmt.Errorf("the -exec command ended: %v", exit.Err)}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", defSocket, "Workload API socket path or address (default from SPIFFE_ENDPOINT_SOCKET)")
	f.StringVar(&dir, "write", "", "directory to keep the files in (created 0700 if missing)")
	f.StringArrayVar(&audiences, "jwt-audience", nil, "also keep a JWT-SVID for this audience in jwt_<audience>.token (repeatable)")
	f.StringVar(&spiffeID, "spiffe-id", "", "write the SVID with this SPIFFE ID (default: the first, the Workload API's default)")
	f.StringVar(&execCmd, "exec", "", "program to start after the first write and restart after each rotation (its arguments after --)")
	f.StringVar(&sigName, "signal", "", "signal (e.g. SIGHUP) to send to the process in -pid-file after each rotation")
	f.StringVar(&pidFile, "pid-file", "", "file holding the pid of the process to signal")
	f.DurationVar(&stopTimeout, "stop-timeout", svidfiles.DefaultStopTimeout, "how long -exec's program has to exit after SIGTERM before it is killed")
	return cmd
}

// watchLogger logs to the command's stderr for a person or a journal.
func watchLogger(cmd *cobra.Command) *zap.Logger {
	ec := zap.NewDevelopmentEncoderConfig()
	ec.EncodeTime = zapcore.TimeEncoderOfLayout("2006-01-02T15:04:05.000Z07:00")
	w := zapcore.Lock(zapcore.AddSync(cmd.ErrOrStderr()))
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(ec), w, zapcore.InfoLevel)).Named("svid-watch")
}
