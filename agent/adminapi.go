package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
	"github.com/sigil-id/sigil/internal/procfs"
	"github.com/sigil-id/sigil/internal/unixsock"
	"github.com/sigil-id/sigil/registration"
	"github.com/sigil-id/sigil/workloadapi"
)

// This file is the agent's admin API (service AgentAdmin), served on a
// unix socket in a 0700 directory: the operator's answer to "why does my
// process get no identity?".
//
// Access control is the file system's: the socket's directory is created
// with mode 0700 and the socket with mode 0600, both owned by the agent's
// user, and package unixsock refuses a directory another user could
// write to. So only root and the agent's own user can connect. This
// matters: Explain runs the attestors on any pid and lists the entries
// the agent holds, which would tell a local user other users' processes'
// selectors (their pods, containers, binaries' hashes) and the node's
// whole registration.

// maxNearMisses bounds the near misses one Explain answer lists.
const maxNearMisses = 50

// explainTimeout bounds one Explain call's attestation.
const explainTimeout = 10 * time.Second

// adminSocketOptions are the unixsock options of the agent's admin socket.
func adminSocketOptions(dataDir string) unixsock.Options {
	return unixsock.Options{Name: "agent admin socket", DirMode: 0o700, SocketMode: 0o600, DataDir: dataDir}
}

// DefaultAdminSocketFor is the admin socket of an agent whose Workload API
// socket is workloadSocket, when none is configured: the default
// (unixsock.DefaultAgentAdminSocket) beside the default Workload API
// socket; otherwise "private/admin.sock" beside the Workload API socket's
// directory when that directory is named "public", else inside it.
func DefaultAdminSocketFor(workloadSocket string) string {
	if workloadSocket == unixsock.DefaultWorkloadSocket() {
		return unixsock.DefaultAgentAdminSocket()
	}
	dir := filepath.Dir(workloadSocket)
	if filepath.Base(dir) == "public" {
		dir = filepath.Dir(dir)
	}
	return filepath.Join(dir, "private", "admin.sock")
}

// adminAPI implements sigilv1.AgentAdminServer.
type adminAPI struct {
	sigilv1.UnimplementedAgentAdminServer
	a  *Agent
	wl *workloadapi.Server
	// procRoot is where /proc is; tests change it.
	procRoot string
}

// listenAdmin listens on the admin socket, refusing an unsafe path or a
// socket another process serves.
func (a *Agent) listenAdmin() (net.Listener, error) {
	l, err := unixsock.Listen(a.cfg.AdminSocket, adminSocketOptions(a.cfg.DataDir))
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return l, nil
}

func newAdminServer(api *adminAPI) *grpc.Server {
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(4 << 10))
	sigilv1.RegisterAgentAdminServer(srv, api)
	return srv
}

// Explain implements sigilv1.AgentAdminServer.
func (s *adminAPI) Explain(ctx context.Context, req *sigilv1.ExplainRequest) (*sigilv1.ExplainResponse, error) {
	pid := req.GetPid()
	if pid <= 0 {
		return nil, status.Errorf(codes.InvalidArgument, "pid must be positive, got %d", pid)
	}
	st, err := readProcStatus(s.procRoot, pid)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, status.Errorf(codes.NotFound, "no process %d in the agent's pid namespace", pid)
		}
		return nil, status.Errorf(codes.FailedPrecondition, "reading process %d: %v", pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, explainTimeout)
	defer cancel()
	caller := workload.Caller{PID: pid, UID: st.EUID, GID: st.EGID, Groups: st.Groups}
	results := s.wl.AttestEach(ctx, caller)
	resp := &sigilv1.ExplainResponse{Pid: pid, Uid: st.EUID, Gid: st.EGID, Attested: true}
	var sels []*sigilv1.Selector
	for _, r := range results {
		ar := &sigilv1.AttestorResult{Name: r.Name, Selectors: r.Selectors}
		if r.Err != nil {
			ar.Error = r.Err.Error()
			resp.Attested = false
		}
		resp.Attestors = append(resp.Attestors, ar)
		sels = append(sels, r.Selectors...)
	}
	held, synced := s.a.cache.heldEntries(s.a.clk.Now())
	resp.Synced = synced
	resp.EntriesHeld = int32(len(held))
	var agentID string
	if id := s.a.SPIFFEID(); !id.IsZero() {
		agentID = id.String()
	}
	resp.Matched, resp.NearMisses, resp.NearMissesOmitted = explainEntries(held, sels, agentID, maxNearMisses)
	if id := req.GetEntryId(); id != "" {
		resp.Entry, resp.EntryMatched = explainEntry(held, sels, id)
	}
	s.a.log.Info("explained workload", zap.Int32("pid", pid), zap.Bool("attested", resp.Attested),
		zap.Int("matched", len(resp.Matched)), zap.Int("near_misses", len(resp.NearMisses)))
	return resp, nil
}

// readProcStatus reads the credentials of pid from <procRoot>/<pid>/status.
func readProcStatus(procRoot string, pid int32) (procfs.Status, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(int(pid)), "status"))
	if err != nil {
		return procfs.Status{}, err
	}
	return procfs.ParseStatus(b)
}

// heldEntry is one entry the agent holds, with its SVID's state.
type heldEntry struct {
	entry    *sigilv1.Entry
	state    string
	cached   bool
	notAfter time.Time
}

// heldEntries returns the entries the cache holds with their SVIDs'
// states at now, and whether the cache has synced with a server.
func (c *cache) heldEntries(now time.Time) ([]heldEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := c.st.sortedIDs()
	out := make([]heldEntry, 0, len(ids))
	for _, id := range ids {
		st := c.st.peek(id)
		h := heldEntry{entry: st.entry.identity(), state: st.phase(now).String()}
		if sv := st.servable(); sv != nil && now.Before(sv.notAfter) {
			h.cached, h.notAfter = true, sv.notAfter
		}
		out = append(out, h)
	}
	return out, c.st.synced
}

// explainEntry explains the held entry with ID id against sels: the
// entry with the selectors sels lack, and whether it matches; nil when no
// held entry has that ID.
func explainEntry(held []heldEntry, sels []*sigilv1.Selector, id string) (*sigilv1.ExplainedEntry, bool) {
	set := registration.NewSelectorSet(sels)
	for _, h := range held {
		e := h.entry
		if e.GetId() != id {
			continue
		}
		ee := &sigilv1.ExplainedEntry{
			EntryId:    e.GetId(),
			SpiffeId:   e.GetSpiffeId(),
			ParentId:   e.GetParentId(),
			Selectors:  e.GetSelectors(),
			SvidCached: h.cached,
			SvidState:  h.state,
		}
		if h.cached {
			ee.SvidNotAfter = h.notAfter.Unix()
		}
		for _, s := range e.GetSelectors() {
			if _, ok := set[registration.FormatSelector(s)]; !ok {
				ee.Missing = append(ee.Missing, s)
			}
		}
		return ee, set.Contains(e.GetSelectors())
	}
	return nil, false
}

// explainEntries sorts held entries into those that sels match (every
// selector of the entry is among sels) and near misses: entries that do
// not match but are parented to the agent itself (agentID, when not
// empty) or have at least one selector of a type that sels has, listed
// with the selectors they lack, fewest missing first, at most max of them;
// omitted counts the near misses left out. Entries the agent holds through
// a node alias and that share no selector type with the process are
// neither.
func explainEntries(held []heldEntry, sels []*sigilv1.Selector, agentID string, max int) (matched, near []*sigilv1.ExplainedEntry, omitted int32) {
	set := registration.NewSelectorSet(sels)
	types := make(map[string]bool, len(sels))
	for _, s := range sels {
		types[s.GetType()] = true
	}
	for _, h := range held {
		e := h.entry
		ee := &sigilv1.ExplainedEntry{
			EntryId:   e.GetId(),
			SpiffeId:  e.GetSpiffeId(),
			ParentId:  e.GetParentId(),
			Selectors: e.GetSelectors(),
		}
		if set.Contains(e.GetSelectors()) {
			ee.SvidCached, ee.SvidState = h.cached, h.state
			if h.cached {
				ee.SvidNotAfter = h.notAfter.Unix()
			}
			matched = append(matched, ee)
			continue
		}
		related := agentID != "" && e.GetParentId() == agentID
		for _, s := range e.GetSelectors() {
			if _, ok := set[registration.FormatSelector(s)]; !ok {
				ee.Missing = append(ee.Missing, s)
			}
			if types[s.GetType()] {
				related = true
			}
		}
		if related {
			near = append(near, ee)
		}
	}
	slices.SortStableFunc(near, func(a, b *sigilv1.ExplainedEntry) int {
		return cmp.Or(
			cmp.Compare(len(a.Missing), len(b.Missing)),
			cmp.Compare(a.SpiffeId, b.SpiffeId),
			cmp.Compare(a.EntryId, b.EntryId),
		)
	})
	if len(near) > max {
		omitted = int32(len(near) - max)
		near = near[:max]
	}
	return matched, near, omitted
}
