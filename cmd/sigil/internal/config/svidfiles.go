package config

import "fmt"

// SVIDFiles is an agent's svid_files "name" { ... } block: a directory the
// agent keeps SVID files in for the entries whose selectors are among
// Selectors (docs/svid-files.md).
type SVIDFiles struct {
	Name         string
	Directory    string
	Selectors    []string // "type:value"
	SPIFFEID     string
	JWTAudiences []string
	// UID and GID own the files; -1 leaves them the agent's.
	UID, GID int
	Signal   string
	PIDFile  string
	Command  []string
}

// SVIDFilesBlocks are an agent's svid_files blocks, in file order.
type SVIDFilesBlocks struct {
	Blocks []SVIDFiles
}

type hclSVIDFiles struct {
	Name         string   `hcl:"name,label"`
	Directory    string   `hcl:"directory"`
	Selectors    []string `hcl:"selectors"`
	SPIFFEID     string   `hcl:"spiffe_id,optional"`
	JWTAudiences []string `hcl:"jwt_audiences,optional"`
	UID          *int     `hcl:"uid,optional"`
	GID          *int     `hcl:"gid,optional"`
	Signal       string   `hcl:"signal,optional"`
	PIDFile      string   `hcl:"pid_file,optional"`
	Command      []string `hcl:"command,optional"`
}

func readSVIDFiles(filename string, blocks []hclSVIDFiles) (*SVIDFilesBlocks, error) {
	if len(blocks) == 0 {
		return nil, nil
	}
	out := &SVIDFilesBlocks{}
	for _, b := range blocks {
		f := SVIDFiles{
			Name: b.Name, Directory: b.Directory, Selectors: b.Selectors, SPIFFEID: b.SPIFFEID,
			JWTAudiences: b.JWTAudiences, UID: -1, GID: -1, Signal: b.Signal, PIDFile: b.PIDFile, Command: b.Command,
		}
		if b.UID != nil {
			if *b.UID < 0 {
				return nil, fmt.Errorf("%s: agent.svid_files %q: uid %d is negative", filename, b.Name, *b.UID)
			}
			f.UID = *b.UID
		}
		if b.GID != nil {
			if *b.GID < 0 {
				return nil, fmt.Errorf("%s: agent.svid_files %q: gid %d is negative", filename, b.Name, *b.GID)
			}
			f.GID = *b.GID
		}
		out.Blocks = append(out.Blocks, f)
	}
	return out, nil
}
