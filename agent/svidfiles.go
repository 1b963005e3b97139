package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/svidfiles"
	"github.com/sigil-id/sigil/workloadapi"
)

// SVIDFiles is one svid_files block: the agent keeps, in Directory, the
// files of package svidfiles for the entries whose selectors are all
// among Selectors, as if a process attested with exactly those selectors
// had asked the Workload API. The operator's configuration is trusted to
// name the selectors; the files are given to Owner, and the key and tokens
// are readable by it only.
type SVIDFiles struct {
	// Name identifies the block in logs and errors. Required, unique.
	Name string
	// Directory is an absolute path; the agent creates it with mode 0700
	// (owned by Owner) or checks that an existing one is not writable by
	// group or others. Required, unique.
	Directory string
	// Selectors stand for the consumer's attested selectors. Required.
	Selectors []*sigilv1.Selector
	// SPIFFEID picks one SVID when several entries match; zero takes the
	// first.
	SPIFFEID spiffeid.ID
	// JWTAudiences are kept in jwt_<audience>.token.
	JWTAudiences []string
	// Owner is who the files belong to; svidfiles.NoOwner keeps them the
	// agent's.
	Owner svidfiles.Owner
	// Signal is sent to the process whose pid is in PIDFile after each
	// rotation; both or neither.
	Signal  syscall.Signal
	PIDFile string
	// Command is run after each rotation (e.g. systemctl reload nginx),
	// within svidfiles.DefaultHookTimeout; not with Signal.
	Command []string
}

// validate reports the first problem with the block.
func (f *SVIDFiles) validate() error {
	switch {
	case f.Name == "":
		return errors.New("svid_files block without a name")
	case f.Directory == "" || !filepath.IsAbs(f.Directory):
		return fmt.Errorf("svid_files %q: directory %q must be an absolute path", f.Name, f.Directory)
	case len(f.Selectors) == 0:
		return fmt.Errorf("svid_files %q: no selectors", f.Name)
	case (f.Signal == 0) != (f.PIDFile == ""):
		return fmt.Errorf("svid_files %q: signal and pid_file go together", f.Name)
	case f.Signal != 0 && len(f.Command) > 0:
		return fmt.Errorf("svid_files %q: set signal and pid_file, or command, not both", f.Name)
	case len(f.Command) > 0 && f.Command[0] == "":
		return fmt.Errorf("svid_files %q: command has an empty program", f.Name)
	}
	for i, s := range f.Selectors {
		if s == nil || s.Type == "" || s.Value == "" {
			return fmt.Errorf("svid_files %q: selector %d is empty", f.Name, i)
		}
	}
	if err := svidfiles.CheckAudiences(f.JWTAudiences); err != nil {
		return fmt.Errorf("svid_files %q: %w", f.Name, err)
	}
	return nil
}

func checkSVIDFiles(blocks []SVIDFiles) error {
	names := map[string]bool{}
	dirs := map[string]string{}
	for i := range blocks {
		f := &blocks[i]
		if err := f.validate(); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		if names[f.Name] {
			return fmt.Errorf("agent: two svid_files blocks are named %q", f.Name)
		}
		names[f.Name] = true
		d := filepath.Clean(f.Directory)
		if o, ok := dirs[d]; ok {
			return fmt.Errorf("agent: svid_files %q and %q both write to %s", o, f.Name, d)
		}
		dirs[d] = f.Name
	}
	return nil
}

// prepareSVIDFiles prepares every block's directory, so that a bad one stops
// the agent at start, and returns the runs to start once the cache is
// being filled.
func (a *Agent) prepareSVIDFiles() ([]func(context.Context), error) {
	var runs []func(context.Context)
	for _, f := range a.cfg.SVIDFiles {
		w, err := svidfiles.NewWriter(f.Directory, f.Owner)
		if err != nil {
			return nil, fmt.Errorf("agent: svid_files %q: %w", f.Name, err)
		}
		log := a.log.Named("svid_files").With(zap.String("name", f.Name))
		var n svidfiles.Notifier
		switch {
		case f.Signal != 0:
			// The agent signals as root: only a process of the files'
			// owner (the agent's own user when there is none), named by a
			// pid file nobody else could have written.
			guard := svidfiles.Owner{UID: f.Owner.UID, GID: f.Owner.GID}
			if guard.UID < 0 {
				guard.UID = os.Geteuid()
			}
			n = &svidfiles.Signal{Signal: f.Signal, PIDFile: f.PIDFile, Logger: log, Guard: &guard}
		case len(f.Command) > 0:
			n = &svidfiles.Hook{Command: f.Command, Logger: log}
		}
		cfg := svidfiles.Config{
			Writer:       w,
			SPIFFEID:     f.SPIFFEID,
			JWTAudiences: f.JWTAudiences,
			Notifier:     n,
			Logger:       log,
			Clock:        a.clk,
		}
		src := &cacheSource{c: a.cache, selectors: f.Selectors, log: log}
		runs = append(runs, func(ctx context.Context) {
			if err := svidfiles.Run(ctx, cfg, src); err != nil && ctx.Err() == nil {
				log.Error("SVID files stopped", zap.Error(err))
			}
		})
	}
	return runs, nil
}

// cacheSource is a svidfiles.Source reading the agent's cache with a
// fixed selector set.
type cacheSource struct {
	c         *cache
	selectors []*sigilv1.Selector
	log       *zap.Logger
}

func (s *cacheSource) WatchX509(ctx context.Context, update func(*svidfiles.Update)) error {
	sub := s.c.SubscribeX509(s.selectors)
	defer sub.Close()
	warned := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case snap := <-sub.Updates():
			if snap == nil {
				continue
			}
			if len(snap.Identities) == 0 {
				if !warned {
					s.log.Warn("no registration entry matches the selectors of this svid_files block yet")
					warned = true
				}
				continue
			}
			warned = false
			update(snapshotUpdate(snap))
		}
	}
}

func snapshotUpdate(snap *workloadapi.X509Snapshot) *svidfiles.Update {
	u := &svidfiles.Update{Bundles: map[spiffeid.TrustDomain][]*x509.Certificate{}}
	for i := range snap.Identities {
		id := &snap.Identities[i]
		certs, err := id.Certificates()
		if err != nil {
			continue // not written; the cache never hands out such an identity
		}
		key, err := id.Signer()
		if err != nil {
			continue
		}
		u.SVIDs = append(u.SVIDs, &x509svid.SVID{ID: id.SPIFFEID, Certificates: certs, PrivateKey: key, Hint: id.Hint})
	}
	if snap.Bundle != nil {
		u.Bundles[snap.Bundle.TrustDomain()] = snap.Bundle.X509Authorities()
	}
	for td, b := range snap.Federated {
		if b != nil {
			u.Bundles[td] = b.X509Authorities()
		}
	}
	return u
}

func (s *cacheSource) FetchJWT(ctx context.Context, id spiffeid.ID, audience string) (string, time.Time, error) {
	want := ""
	if !id.IsZero() {
		want = id.String()
	}
	svids, err := s.c.FetchJWTSVIDs(ctx, s.selectors, []string{audience}, want)
	if err != nil {
		return "", time.Time{}, err
	}
	if len(svids) == 0 {
		return "", time.Time{}, workloadapi.ErrNoIdentity
	}
	return svids[0].Token, svids[0].ExpiresAt, nil
}
