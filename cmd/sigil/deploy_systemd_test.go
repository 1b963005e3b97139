package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/sigil-id/sigil/cmd/sigil/internal/config"
	"github.com/sigil-id/sigil/internal/unixsock"
	"github.com/sigil-id/sigil/server"
)

// The systemd units of deploy/systemd are checked here, beside the
// configuration parser of the binary they run.

var systemdDir = filepath.Join("..", "..", "deploy", "systemd")

// unitKeys are the keys the units may use, by section (systemd.unit(5),
// systemd.service(5), systemd.exec(5), systemd.kill(5),
// systemd.resource-control(5)): a key outside them is a typo, which
// systemd would only warn about and ignore.
var unitKeys = map[string][]string{
	"Unit": {"Description", "Documentation", "Wants", "Requires", "After", "Before", "BindsTo", "PartOf",
		"Conflicts", "ConditionPathExists", "StartLimitIntervalSec", "StartLimitBurst"},
	"Service": {"Type", "ExecStart", "ExecStartPre", "ExecReload", "ExecStop", "Restart", "RestartSec",
		"TimeoutStartSec", "TimeoutStopSec", "KillMode", "KillSignal", "Environment", "EnvironmentFile",
		"User", "Group", "DynamicUser", "SupplementaryGroups", "WorkingDirectory",
		"StateDirectory", "StateDirectoryMode", "RuntimeDirectory", "RuntimeDirectoryMode", "RuntimeDirectoryPreserve",
		"ConfigurationDirectory", "ConfigurationDirectoryMode", "LogsDirectory", "CacheDirectory", "UMask",
		"LimitNOFILE", "LimitMEMLOCK", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
		"PrivateUsers", "PrivateNetwork", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
		"ProtectControlGroups", "ProtectClock", "ProtectHostname", "ProtectProc", "ProcSubset",
		"RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "RemoveIPC",
		"LockPersonality", "MemoryDenyWriteExecute", "SystemCallArchitectures", "SystemCallFilter",
		"SystemCallErrorNumber", "CapabilityBoundingSet", "AmbientCapabilities", "ReadWritePaths", "ReadOnlyPaths",
		"InaccessiblePaths", "DeviceAllow", "DevicePolicy", "IPAddressAllow", "IPAddressDeny", "MemoryMax", "TasksMax"},
	"Install": {"WantedBy", "RequiredBy", "Alias", "Also"},
}

var unitBooleans = []string{"DynamicUser", "NoNewPrivileges", "PrivateTmp", "PrivateDevices", "PrivateUsers",
	"PrivateNetwork", "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
	"ProtectClock", "ProtectHostname", "RestrictRealtime", "RestrictSUIDSGID", "RemoveIPC", "LockPersonality",
	"MemoryDenyWriteExecute", "RuntimeDirectoryPreserve"}

// unitFile is a parsed unit: section -> key -> values in order (a key may
// repeat; an empty assignment resets it, as systemd does).
type unitFile map[string]map[string][]string

// get returns the last value of key, and whether it is set.
func (u unitFile) get(section, key string) (string, bool) {
	v := u[section][key]
	if len(v) == 0 {
		return "", false
	}
	return v[len(v)-1], true
}

// parseUnit reads a unit file the way systemd does, strictly: sections,
// key=value lines, comments; unknown sections and keys, keys outside a
// section, continuation lines and malformed booleans are errors.
func parseUnit(src []byte) (unitFile, error) {
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(src))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
			continue
		case strings.HasSuffix(line, "\\"):
			return nil, fmt.Errorf("line %d: continuation lines are not used in these units", n)
		case line[0] == '[':
			if !strings.HasSuffix(line, "]") {
				return nil, fmt.Errorf("line %d: malformed section header %q", n, line)
			}
			section = line[1 : len(line)-1]
			if _, ok := unitKeys[section]; !ok {
				return nil, fmt.Errorf("line %d: unknown section [%s]", n, section)
			}
			if u[section] != nil {
				return nil, fmt.Errorf("line %d: section [%s] appears twice", n, section)
			}
			u[section] = map[string][]string{}
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("line %d: %q is not key=value", n, line)
		}
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if section == "" {
			return nil, fmt.Errorf("line %d: %s outside a section", n, key)
		}
		if !slices.Contains(unitKeys[section], key) {
			return nil, fmt.Errorf("line %d: unknown key %s in section [%s]", n, key, section)
		}
		if slices.Contains(unitBooleans, key) && !slices.Contains([]string{"yes", "no", "true", "false", "1", "0", "on", "off"}, value) {
			return nil, fmt.Errorf("line %d: %s=%q is not a boolean", n, key, value)
		}
		if value == "" {
			u[section][key] = []string{""}
			continue
		}
		u[section][key] = append(u[section][key], value)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for _, s := range []string{"Unit", "Service", "Install"} {
		if u[s] == nil {
			return nil, fmt.Errorf("no [%s] section", s)
		}
	}
	return u, nil
}

func TestParseUnitIsStrict(t *testing.T) {
	ok := "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"
	if _, err := parseUnit([]byte(ok)); err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{
		"unknown key":     strings.Replace(ok, "ExecStart", "ExecStrat", 1),
		"unknown section": ok + "[Servcie]\n",
		"outside":         "Description=x\n" + ok,
		"boolean":         strings.Replace(ok, "ExecStart=/bin/true", "ExecStart=/bin/true\nPrivateTmp=maybe", 1),
		"not key=value":   strings.Replace(ok, "Description=x", "Description x", 1),
		"twice":           ok + "[Unit]\n",
		"no install":      "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n",
		"continuation":    strings.Replace(ok, "ExecStart=/bin/true", "ExecStart=/bin/true \\\n  -x", 1),
	} {
		if _, err := parseUnit([]byte(src)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

// systemdDaemon describes one unit and the Sigil daemon it runs.
type systemdDaemon struct {
	unit, daemon string
	caps         string // CapabilityBoundingSet= and AmbientCapabilities=
}

var systemdDaemons = []systemdDaemon{
	{"sigil-server.service", "server", ""},
	// The unix workload attestor reads /proc/<pid>/exe of other users'
	// processes and hashes their executables.
	{"sigil-agent.service", "agent", "CAP_SYS_PTRACE CAP_DAC_READ_SEARCH"},
}

// systemdBinary is where the units expect the sigil binary.
const systemdBinary = "/usr/local/bin/sigil"

func TestSystemdUnits(t *testing.T) {
	checkSystemdUnits(t, systemdDir)
}

// checkSystemdUnits checks the units of dir, their sandboxing, and that
// the paths they give the daemon (StateDirectory=, RuntimeDirectory=,
// ConfigurationDirectory=) are the ones the daemon's configuration and
// its defaults use; then, where systemd-analyze is installed, has
// systemd verify them.
func checkSystemdUnits(t testing.TB, dir string) {
	// The defaults of a service user: no $XDG_RUNTIME_DIR.
	t.Setenv("XDG_RUNTIME_DIR", "")
	root := t.TempDir()
	for _, d := range systemdDaemons {
		src, err := os.ReadFile(filepath.Join(dir, d.unit))
		if err != nil {
			t.Fatal(err)
		}
		u, err := parseUnit(src)
		if err != nil {
			t.Errorf("%s: %v", d.unit, err)
			continue
		}
		want := map[string]string{
			"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
			"DynamicUser": "yes", "StateDirectory": "sigil/" + d.daemon, "RuntimeDirectory": "sigil/" + d.daemon,
			"ConfigurationDirectory": "sigil", "CapabilityBoundingSet": d.caps, "AmbientCapabilities": d.caps,
			"StateDirectoryMode": "0700", "RuntimeDirectoryMode": "0755", "UMask": "0077",
			"SystemCallFilter": "@system-service", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
		}
		for k, v := range want {
			if got, ok := u.get("Service", k); !ok || got != v {
				t.Errorf("%s: %s=%q, want %q", d.unit, k, got, v)
			}
		}
		for _, k := range []string{"User", "Environment", "ReadWritePaths"} {
			if _, ok := u.get("Service", k); ok {
				// User= contradicts DynamicUser=; Environment= could set
				// XDG_RUNTIME_DIR and move the sockets out of
				// RuntimeDirectory=; ProtectSystem=strict already allows
				// writing the State- and RuntimeDirectory.
				t.Errorf("%s: %s= is set", d.unit, k)
			}
		}
		if d.daemon == "agent" {
			// The agent attests other processes through /proc.
			for _, k := range []string{"ProtectProc", "ProcSubset"} {
				if _, ok := u.get("Service", k); ok {
					t.Errorf("%s: %s= hides the workloads' /proc from the agent", d.unit, k)
				}
			}
		}
		if got, _ := u.get("Install", "WantedBy"); got != "multi-user.target" {
			t.Errorf("%s: WantedBy=%q", d.unit, got)
		}
		state := "/var/lib/" + first(u.get("Service", "StateDirectory"))
		run := "/run/" + first(u.get("Service", "RuntimeDirectory"))
		etc := "/etc/" + first(u.get("Service", "ConfigurationDirectory"))
		if ef, ok := u.get("Service", "EnvironmentFile"); !ok || ef != "-"+etc+"/sigil-"+d.daemon+".env" {
			t.Errorf("%s: EnvironmentFile=%q, want the optional %s/sigil-%s.env", d.unit, ef, etc, d.daemon)
		}

		// ExecStart: the daemon with its real flags and a -config file in
		// ConfigurationDirectory=, which is this directory's <daemon>.hcl.
		execStart, _ := u.get("Service", "ExecStart")
		args := strings.Fields(execStart)
		if len(args) == 0 || args[0] != systemdBinary {
			t.Errorf("%s: ExecStart=%q does not run %s", d.unit, execStart, systemdBinary)
			continue
		}
		var sflags *config.ServerFlags
		var aflags *config.AgentFlags
		cfgPath := parseDaemonArgs(t, args[1:], d.daemon, func(fs *pflag.FlagSet) {
			if d.daemon == "server" {
				sflags = config.NewServerFlags(fs)
			} else {
				aflags = config.NewAgentFlags(fs)
			}
		})
		if cfgPath != etc+"/"+d.daemon+".hcl" {
			t.Errorf("%s: -config %q is not %s/%s.hcl", d.unit, cfgPath, etc, d.daemon)
			continue
		}
		hclSrc, err := os.ReadFile(filepath.Join(dir, d.daemon+".hcl"))
		if err != nil {
			t.Fatal(err)
		}
		f, err := config.Parse(cfgPath, hclSrc)
		if err != nil {
			t.Errorf("%s: %v", d.daemon+".hcl", err)
			continue
		}
		rooted, err := config.Parse(cfgPath, []byte(rootPaths(string(hclSrc), root)))
		if err != nil {
			t.Fatal(err)
		}
		if d.daemon == "server" {
			s := f.Server
			if s == nil || f.Agent != nil {
				t.Errorf("server.hcl: want one server block")
				continue
			}
			sflags.Apply(s)
			if err := s.Validate(); err != nil {
				t.Errorf("server.hcl: %v", err)
			}
			cfg := server.DefaultConfig()
			setString(&cfg.DataDir, s.DataDir)
			setString(&cfg.AdminSocket, s.AdminSocket)
			if cfg.DataDir != state {
				t.Errorf("server.hcl: data_dir %q is not the unit's StateDirectory %s", cfg.DataDir, state)
			}
			if !strings.HasPrefix(cfg.AdminSocket, run+"/") {
				t.Errorf("server.hcl: the admin socket %s is not in the unit's RuntimeDirectory %s", cfg.AdminSocket, run)
			}
			if s.JoinSecret != "" {
				t.Errorf("server.hcl holds a join secret")
			}
			rs := rooted.Server
			sflags.Apply(rs)
			built, err := serverConfig(rs, zap.NewNop())
			if err != nil {
				t.Errorf("server.hcl: building the server: %v", err)
			} else if len(built.NodeVerifiers) == 0 || built.KeyStore == nil {
				t.Errorf("server.hcl: no plugins built")
			}
			continue
		}
		a := f.Agent
		if a == nil || f.Server != nil {
			t.Errorf("agent.hcl: want one agent block")
			continue
		}
		aflags.Apply(a)
		if err := a.Validate(); err != nil {
			t.Errorf("agent.hcl: %v", err)
		}
		if a.DataDir != state {
			t.Errorf("agent.hcl: data_dir %q is not the unit's StateDirectory %s", a.DataDir, state)
		}
		sock := a.SocketPath
		if sock == "" {
			sock = unixsock.DefaultWorkloadSocket()
		}
		admin := a.AdminSocket
		if admin == "" {
			admin = unixsock.DefaultAgentAdminSocket()
		}
		for _, p := range []string{sock, admin} {
			if !strings.HasPrefix(p, run+"/") {
				t.Errorf("agent.hcl: socket %s is not in the unit's RuntimeDirectory %s", p, run)
			}
		}
		if a.TrustBundlePath != "" && !strings.HasPrefix(a.TrustBundlePath, etc+"/") {
			t.Errorf("agent.hcl: trust_bundle_path %s is not in the unit's ConfigurationDirectory %s", a.TrustBundlePath, etc)
		}
		if a.JoinToken != "" || a.JoinTokenFile != "" {
			t.Errorf("agent.hcl: the join token belongs in the EnvironmentFile")
		}
		ra := rooted.Agent
		aflags.Apply(ra)
		if ra.TrustBundlePath != "" {
			writeTestCA(t, ra.TrustBundlePath)
		}
		// As the daemon does: SIGIL_JOIN_TOKEN from the EnvironmentFile.
		if err := ra.ResolveJoinToken(func(string) string { return "token" }); err != nil {
			t.Fatal(err)
		}
		built, err := agentConfig(ra, zap.NewNop())
		if err != nil {
			t.Errorf("agent.hcl: building the agent: %v", err)
		} else if built.NodeAttestor == nil || len(built.WorkloadAttestors) == 0 {
			t.Errorf("agent.hcl: no plugins built")
		}
	}

	// systemd's own check, with the binary replaced by an executable that
	// exists (verify refuses an ExecStart= that does not).
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Logf("systemd-analyze is not installed: the units were checked by parseUnit only")
		return
	}
	vdir := t.TempDir()
	bin := filepath.Join(vdir, "sigil")
	writeTestFile(t, bin, []byte("#!/bin/sh\n"))
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	var units []string
	for _, d := range systemdDaemons {
		src, err := os.ReadFile(filepath.Join(dir, d.unit))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(vdir, d.unit)
		writeTestFile(t, p, bytes.ReplaceAll(src, []byte(systemdBinary), []byte(bin)))
		units = append(units, p)
	}
	cmd := exec.Command(analyze, append([]string{"verify", "--man=no", "--generators=no"}, units...)...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	err = cmd.Run()
	if out := strings.TrimSpace(stderr.String()); err != nil || out != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func first(s string, _ bool) string { return s }

// TestSystemdUnitsMutations: each broken unit or configuration, made in
// a copy of deploy/systemd, is reported with the message expected.
func TestSystemdUnitsMutations(t *testing.T) {
	type mutation struct{ name, file, old, new, want string }
	cases := []mutation{
		{"typo", "sigil-server.service", "ProtectSystem=strict", "ProtectSytem=strict", "unknown key ProtectSytem"},
		{"state directory", "sigil-server.service", "StateDirectory=sigil/server", "StateDirectory=sigil", `StateDirectory="sigil"`},
		{"data dir", "server.hcl", `data_dir = "/var/lib/sigil/server"`, `data_dir = "/var/lib/sigil"`, "is not the unit's StateDirectory"},
		{"agent socket", "agent.hcl", `health_address = "127.0.0.1:8082"`, "health_address = \"127.0.0.1:8082\"\n  socket_path = \"/run/sigil/api.sock\"", "is not in the unit's RuntimeDirectory"},
		{"agent proc", "sigil-agent.service", "NoNewPrivileges=yes", "NoNewPrivileges=yes\nProtectProc=invisible", "hides the workloads' /proc"},
		{"capabilities", "sigil-server.service", "CapabilityBoundingSet=\n", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n", "CapabilityBoundingSet="},
		{"config path", "sigil-agent.service", "-config /etc/sigil/agent.hcl", "-config /etc/agent.hcl", "-config"},
		{"unknown flag", "sigil-agent.service", "-config /etc/sigil/agent.hcl", "-config /etc/sigil/agent.hcl -no-such-flag", "unknown flag"},
		{"plugin", "agent.hcl", `workload_attestor "unix" {}`, `workload_attestor "unx" {}`, "building the agent"},
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		// A value only systemd knows to be wrong.
		cases = append(cases, mutation{"systemd verify", "sigil-agent.service", "Restart=on-failure", "Restart=sometimes", "systemd-analyze verify"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			files, err := os.ReadDir(systemdDir)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, f := range files {
				src, err := os.ReadFile(filepath.Join(systemdDir, f.Name()))
				if err != nil {
					t.Fatal(err)
				}
				if f.Name() == tc.file {
					if !bytes.Contains(src, []byte(tc.old)) {
						t.Fatalf("%s does not contain %q", tc.file, tc.old)
					}
					src = bytes.ReplaceAll(src, []byte(tc.old), []byte(tc.new))
					found = true
				}
				writeTestFile(t, filepath.Join(dir, f.Name()), src)
			}
			if !found {
				t.Fatalf("no file %s", tc.file)
			}
			r := &recordTB{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				checkSystemdUnits(r, dir)
			}()
			<-done
			if !slices.ContainsFunc(r.errs, func(e string) bool { return strings.Contains(e, tc.want) }) {
				t.Errorf("no failure containing %q; failures: %q", tc.want, r.errs)
			}
		})
	}
}
