package unix

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	sigilv1 "github.com/sigil-id/sigil/api/sigil/v1"
	"github.com/sigil-id/sigil/attestor/workload"
)

func values(t *testing.T, sels []*sigilv1.Selector) []string {
	t.Helper()
	var out []string
	for _, s := range sels {
		if s.GetType() != Name {
			t.Fatalf("selector type %q, want %q", s.GetType(), Name)
		}
		out = append(out, s.GetValue())
	}
	return out
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func wantContains(t *testing.T, got []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("selectors %q lack %q", got, w)
		}
	}
}

// caller describes process pid with this process's credentials, as the
// Workload API would for a child that connected.
func caller(pid int) workload.Caller {
	return workload.Caller{PID: int32(pid), UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
}

func self() workload.Caller { return caller(os.Getpid()) }

func TestName(t *testing.T) {
	if got := New().Name(); got != "unix" {
		t.Fatalf("Name() = %q", got)
	}
}

func TestAttestSelf(t *testing.T) {
	a := New()
	sels, err := a.Attest(context.Background(), self())
	if err != nil {
		t.Fatal(err)
	}
	got := values(t, sels)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, err = filepath.EvalSymlinks(exe)
	if err != nil {
		t.Fatal(err)
	}
	wantContains(t, got,
		"uid:"+strconv.Itoa(os.Geteuid()),
		"gid:"+strconv.Itoa(os.Getegid()),
		"path:"+exe,
		"sha256:"+fileSHA256(t, exe),
	)
	groups, err := os.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups {
		wantContains(t, got, "supplementary_gid:"+strconv.Itoa(g))
	}
	if n := countPrefix(got, "supplementary_gid:"); n != len(groups) {
		t.Errorf("%d supplementary_gid selectors, want %d", n, len(groups))
	}

	// A second attestation uses the cached hash.
	if _, err := a.Attest(context.Background(), self()); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	hashed := a.hashed
	a.mu.Unlock()
	if hashed != 1 {
		t.Errorf("executable hashed %d times, want 1", hashed)
	}
}

func countPrefix(vals []string, prefix string) int {
	n := 0
	for _, v := range vals {
		if len(v) >= len(prefix) && v[:len(prefix)] == prefix {
			n++
		}
	}
	return n
}

func TestAttestChild(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	cmd := exec.Command(sleep, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	real, err := filepath.EvalSymlinks(sleep)
	if err != nil {
		t.Fatal(err)
	}
	sels, err := New().Attest(context.Background(), caller(cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	got := values(t, sels)
	wantContains(t, got,
		"uid:"+strconv.Itoa(os.Geteuid()),
		"gid:"+strconv.Itoa(os.Getegid()),
		"path:"+real,
		"sha256:"+fileSHA256(t, real),
	)
}

func TestAttestUserAndGroupNames(t *testing.T) {
	sels, err := New().Attest(context.Background(), self())
	if err != nil {
		t.Fatal(err)
	}
	got := values(t, sels)
	if os.Geteuid() == 0 {
		wantContains(t, got, "user:root")
	}
	if os.Getegid() == 0 {
		wantContains(t, got, "group:root")
	}
}

func TestAttestGoneProcess(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip("cannot run true:", err)
	}
	// The child has exited and been reaped; its pid is (almost surely)
	// unused now.
	_, err := New().Attest(context.Background(), caller(cmd.Process.Pid))
	if !errors.Is(err, workload.ErrProcessGone) {
		t.Fatalf("err = %v, want ErrProcessGone", err)
	}
	// A pid beyond pid_max can never exist.
	_, err = New().Attest(context.Background(), caller(1<<30))
	if !errors.Is(err, workload.ErrProcessGone) {
		t.Fatalf("err = %v, want ErrProcessGone", err)
	}
	if _, err := New().Attest(context.Background(), caller(-1)); err == nil {
		t.Fatal("negative pid: no error")
	}
}

func TestReadStatusEffectiveIDs(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "status")
	content := "Name:\tx\nUid:\t1000\t2000\t3000\t4000\nGid:\t10\t20\t30\t40\nGroups:\t5 6 7 \n"
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := readStatus(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.EUID != 2000 || st.EGID != 20 || !slices.Equal(st.Groups, []uint32{5, 6, 7}) {
		t.Fatalf("status = %+v", st)
	}
	for _, bad := range []string{"Uid:\t1\nGid:\t1\t1\n", "Gid:\t1\t1\n", "Uid:\t1\tx\nGid:\t1\t1\n", "Uid:\t1\t1\nGid:\t1\t1\nGroups:\tz\n"} {
		if err := os.WriteFile(p, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := readStatus(p); err == nil {
			t.Errorf("readStatus(%q): no error", bad)
		}
	}
}

func TestNameCacheReusesAndExpires(t *testing.T) {
	calls := 0
	now := time.Unix(1000, 0)
	c := newNameCache(func(id string) (string, error) {
		calls++
		if id == "404" {
			return "", errors.New("unknown id")
		}
		return "name-" + id, nil
	})
	c.now = func() time.Time { return now }
	for i := 0; i < 3; i++ {
		if n, ok := c.lookup("7"); !ok || n != "name-7" {
			t.Fatalf("lookup: %q %v", n, ok)
		}
		if _, ok := c.lookup("404"); ok {
			t.Fatal("unknown id resolved")
		}
	}
	if calls != 2 {
		t.Fatalf("resolved %d times, want 2 (one per id)", calls)
	}
	now = now.Add(nameTTL)
	c.lookup("7")
	if calls != 3 {
		t.Fatalf("after TTL: resolved %d times, want 3", calls)
	}
}

// TestAttestUsesConnectTimeCredentials: the user and group selectors are
// the credentials the caller connected with, whatever /proc says now (a
// caller that exec'd a set-user-ID program after connecting is still the
// user who connected), and groups reported by the kernel are used as
// given.
func TestAttestUsesConnectTimeCredentials(t *testing.T) {
	c := self()
	c.UID, c.GID, c.Groups = 4242, 4343, []uint32{77, 78}
	sels, err := New().Attest(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	got := values(t, sels)
	wantContains(t, got, "uid:4242", "gid:4343", "supplementary_gid:77", "supplementary_gid:78")
	if n := countPrefix(got, "uid:"); n != 1 {
		t.Errorf("%d uid selectors, want 1: %q", n, got)
	}
	if n := countPrefix(got, "supplementary_gid:"); n != 2 {
		t.Errorf("%d supplementary_gid selectors, want 2: %q", n, got)
	}
}

// TestAttestQuick: AttestQuick answers only from what is cached and
// fresh. Before the names are resolved and the executable hashed it
// declines (and hashes nothing); afterwards it returns exactly Attest's
// selectors; an expired user or group name, or another executable, makes
// it decline again.
func TestAttestQuick(t *testing.T) {
	a := New()
	now := time.Now()
	clock := func() time.Time { return now }
	a.users.now, a.groups.now = clock, clock
	c := self()
	if sels, ok, err := a.AttestQuick(c); ok || sels != nil || err != nil {
		t.Fatalf("AttestQuick before Attest: %v, %v, %v; want it to decline", sels, ok, err)
	}
	if a.hashed != 0 {
		t.Fatalf("AttestQuick hashed %d files", a.hashed)
	}
	want, err := a.Attest(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := a.AttestQuick(c)
	if !ok || err != nil {
		t.Fatalf("AttestQuick after Attest: %v, %v", ok, err)
	}
	if !slices.Equal(values(t, got), values(t, want)) {
		t.Fatalf("AttestQuick: %q; Attest: %q", values(t, got), values(t, want))
	}
	if a.hashed != 1 {
		t.Fatalf("hashed %d times, want 1", a.hashed)
	}

	// The user name expires (the group name is kept fresh).
	now = now.Add(nameTTL)
	a.groups.now = time.Now
	if _, ok, _ := a.AttestQuick(c); ok {
		t.Fatal("AttestQuick answered with an expired user name")
	}
	// The group name expires.
	a.users.now, a.groups.now = time.Now, clock
	if _, ok, _ := a.AttestQuick(c); ok {
		t.Fatal("AttestQuick answered with an expired group name")
	}
	a.groups.now = time.Now

	// Another executable, never hashed.
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sleep, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	if _, ok, _ := a.AttestQuick(caller(cmd.Process.Pid)); ok {
		t.Fatal("AttestQuick answered for an executable it had not hashed")
	}
	if a.hashed != 1 {
		t.Fatalf("hashed %d times, want 1", a.hashed)
	}
	// A bad pid is an answer, as from Attest.
	if _, ok, err := a.AttestQuick(caller(-1)); !ok || err == nil {
		t.Fatalf("AttestQuick(pid -1): %v, %v; want an error", ok, err)
	}
}

// TestAttestQuickMemo: AttestQuick gives the same selectors again for the
// same caller identity without building them, and a new answer as soon as
// anything they were made of differs: the ids, the supplementary groups,
// a user or group name, or the executable's hash. A caller appending to
// an answer does not change the next one.
func TestAttestQuickMemo(t *testing.T) {
	a := New()
	now := time.Now()
	clock := func() time.Time { return now }
	a.users.now, a.groups.now = clock, clock
	names := map[string]string{}
	a.users.resolve = func(id string) (string, error) { return "user-" + id + names["user"], nil }
	a.groups.resolve = func(id string) (string, error) { return "group-" + id, nil }
	c := self()
	c.Groups = []uint32{77}
	want, err := a.Attest(context.Background(), c)
	if err != nil {
		t.Fatal(err)
	}
	first, ok, err := a.AttestQuick(c)
	if !ok || err != nil {
		t.Fatalf("AttestQuick: %v, %v", ok, err)
	}
	if !slices.Equal(values(t, first), values(t, want)) {
		t.Fatalf("AttestQuick: %q; Attest: %q", values(t, first), values(t, want))
	}
	again, _, _ := a.AttestQuick(c)
	if &again[0] != &first[0] {
		t.Fatal("the same caller's selectors were built again")
	}
	// Appending to an answer copies it.
	extended := append(again, &sigilv1.Selector{Type: Name, Value: "uid:0"})
	if &extended[0] == &first[0] {
		t.Fatal("appending to a shared answer wrote into it")
	}
	if got, _, _ := a.AttestQuick(c); !slices.Equal(values(t, got), values(t, want)) {
		t.Fatalf("after an append: %q, want %q", values(t, got), values(t, want))
	}
	if allocs := testing.AllocsPerRun(100, func() { a.AttestQuick(c) }); allocs > 8 {
		t.Errorf("a memoized AttestQuick allocates %v times, want at most 8 (paths and /proc reads)", allocs)
	}

	check := func(what string, c workload.Caller, wantSel string) {
		t.Helper()
		got, ok, err := a.AttestQuick(c)
		if !ok || err != nil {
			t.Fatalf("%s: AttestQuick: %v, %v", what, ok, err)
		}
		if !slices.Contains(values(t, got), wantSel) {
			t.Fatalf("%s: selectors %q lack %q", what, values(t, got), wantSel)
		}
		if &got[0] == &first[0] {
			t.Fatalf("%s: the old answer was given", what)
		}
	}
	other := c
	other.UID = c.UID + 1000
	a.users.lookup(strconv.FormatUint(uint64(other.UID), 10))
	check("another uid", other, "uid:"+strconv.FormatUint(uint64(other.UID), 10))
	other = c
	other.Groups = []uint32{78}
	check("other groups", other, "supplementary_gid:78")
	// The user's name changes and is resolved again after its TTL.
	names["user"] = "-renamed"
	now = now.Add(nameTTL)
	a.users.lookup(strconv.FormatUint(uint64(c.UID), 10))
	a.groups.lookup(strconv.FormatUint(uint64(c.GID), 10))
	check("renamed user", c, "user:user-"+strconv.FormatUint(uint64(c.UID), 10)+"-renamed")
	// The executable's hash changes in the hash cache (as it would for
	// a file rewritten in place with its old mtime restored).
	renamed, _, _ := a.AttestQuick(c)
	a.mu.Lock()
	for k := range a.hashes {
		a.hashes[k] = "0000"
	}
	a.mu.Unlock()
	got, _, _ := a.AttestQuick(c)
	if !slices.Contains(values(t, got), "sha256:0000") || &got[0] == &renamed[0] {
		t.Fatalf("after the hash changed: %q", values(t, got))
	}
	// The memo is bounded.
	for i := range 2*maxQuickMemo + 1 {
		other := c
		other.UID = uint32(100000 + i)
		a.users.lookup(strconv.FormatUint(uint64(other.UID), 10))
		if _, ok, err := a.AttestQuick(other); !ok || err != nil {
			t.Fatalf("uid %d: AttestQuick: %v, %v", other.UID, ok, err)
		}
	}
	a.mu.Lock()
	n := len(a.quick)
	a.mu.Unlock()
	if n > maxQuickMemo {
		t.Fatalf("%d answers memoized, want at most %d", n, maxQuickMemo)
	}
}
