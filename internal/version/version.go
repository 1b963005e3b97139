// Package version describes the build of this binary: its release
// version, the commit it was built from and when, set at link time by
// `make release`:
//
//	go build -ldflags "-X github.com/sigil-id/sigil/internal/version.version=v1.2.3 \
//	  -X github.com/sigil-id/sigil/internal/version.commit=<sha> \
//	  -X github.com/sigil-id/sigil/internal/version.date=2026-11-30T20:00:00Z"
//
// A build without them (go build, make build) reports version "dev", no
// build date, and the commit from the VCS stamp the go command embeds
// (debug.ReadBuildInfo), when there is one.
package version

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// Set by -ldflags -X at link time; see the package doc.
var (
	version = ""
	commit  = ""
	date    = ""
)

// Info is the build of a binary. Its JSON form is the stable schema of
// `sigil version -output json`: fields are only ever added.
type Info struct {
	// Version is the release, `git describe --tags --always --dirty` at
	// build time (v1.2.3, v1.2.3-4-gabcdef0-dirty), or "dev".
	Version string `json:"version"`
	// Commit is the full commit hash, "" when unknown; Modified is set
	// when the work tree had uncommitted changes (known only from the
	// VCS stamp, or a version ending in -dirty).
	Commit   string `json:"commit"`
	Modified bool   `json:"modified"`
	// BuildDate is when the release was built (RFC 3339, UTC), "" for a
	// build that did not set it.
	BuildDate string `json:"build_date"`
	// GoVersion, OS and Arch are the toolchain and the target.
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	// Cgo reports a build with cgo; without it (the static release
	// binaries) PKCS#11 tokens cannot be used.
	Cgo bool `json:"cgo"`
}

// Get returns the build of this binary.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return get(version, commit, date, bi)
}

// get builds the Info from the link-time values and the build info (nil
// if unavailable).
func get(version, commit, date string, bi *debug.BuildInfo) Info {
	info := Info{
		Version:   version,
		Commit:    commit,
		BuildDate: date,
		GoVersion: runtime.Version(),
		OS:        runtime.GOOS,
		Arch:      runtime.GOARCH,
		Cgo:       cgoEnabled,
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Commit == "" && bi != nil {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Commit = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	if strings.HasSuffix(info.Version, "-dirty") {
		info.Modified = true
	}
	return info
}
