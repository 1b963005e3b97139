// Package health serves the /live and /ready HTTP endpoints of the sigil
// daemons, for process supervisors, load balancers and Kubernetes probes.
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// ReadyFunc reports why the process is not ready yet, or nil once it is.
type ReadyFunc func() error

// Handler returns the health handler: /live answers 200 as long as the
// process serves HTTP at all; /ready answers 200 when ready returns nil
// and 503 with the reason otherwise.
func Handler(ready ReadyFunc) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/live", func(w http.ResponseWriter, r *http.Request) {
		if !allowed(w, r) {
			return
		}
		write(w, http.StatusOK, "live")
	})
	mux.HandleFunc("/ready", func(w http.ResponseWriter, r *http.Request) {
		if !allowed(w, r) {
			return
		}
		if err := ready(); err != nil {
			write(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
		write(w, http.StatusOK, "ready")
	})
	return mux
}

func allowed(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	write(w, http.StatusMethodNotAllowed, "method not allowed")
	return false
}

func write(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintln(w, body)
}

// Server is a running health endpoint.
type Server struct {
	ln   net.Listener
	srv  *http.Server
	done chan error
}

// Start listens on addr and serves Handler(ready) until Stop. Listening
// happens before Start returns, so a bad or busy address is reported at
// once.
func Start(addr string, ready ReadyFunc, log *zap.Logger, opts ...Option) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health endpoint: %w", err)
	}
	if log == nil {
		log = zap.NewNop()
	}
	s := &Server{
		ln: ln,
		srv: &http.Server{
			Handler:           handler(ready, opts),
			ReadHeaderTimeout: 5 * time.Second,
			ErrorLog:          zap.NewStdLog(log),
		},
		done: make(chan error, 1),
	}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	log.Info("health endpoint listening", zap.String("address", ln.Addr().String()))
	return s, nil
}

// Option adds to the endpoint.
type Option func(*http.ServeMux)

// WithHandler serves h at path beside /live and /ready (e.g. /metrics).
func WithHandler(path string, h http.Handler) Option {
	return func(m *http.ServeMux) { m.Handle(path, h) }
}

func handler(ready ReadyFunc, opts []Option) http.Handler {
	if len(opts) == 0 {
		return Handler(ready)
	}
	mux := http.NewServeMux()
	mux.Handle("/", Handler(ready))
	for _, o := range opts {
		o(mux)
	}
	return mux
}

// Addr is the address the endpoint listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Stop shuts the endpoint down, waiting up to the context's deadline for
// requests in flight.
func (s *Server) Stop(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if serveErr := <-s.done; err == nil {
		err = serveErr
	}
	return err
}

// Closed returns a ReadyFunc that is ready once ch is closed, and reports
// notReady until then.
func Closed(ch <-chan struct{}, notReady string) ReadyFunc {
	return func() error {
		select {
		case <-ch:
			return nil
		default:
			return errors.New(notReady)
		}
	}
}

// All combines checks: ready when every one of them is.
func All(checks ...ReadyFunc) ReadyFunc {
	return func() error {
		for _, c := range checks {
			if err := c(); err != nil {
				return err
			}
		}
		return nil
	}
}
