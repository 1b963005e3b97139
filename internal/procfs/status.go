package procfs

import (
	"bytes"
	"errors"
	"strconv"
)

// Status holds the credentials read from a /proc/<pid>/status file.
type Status struct {
	// EUID and EGID are the effective user and group ids.
	EUID, EGID uint32
	// Groups are the supplementary groups; empty, not nil, when the
	// process has none.
	Groups []uint32
}

// ErrMalformedStatus is returned for a status file that lacks or garbles
// the Uid, Gid or Groups lines.
var ErrMalformedStatus = errors.New("procfs: malformed status file")

// ParseStatus reads the effective ids and the supplementary groups from the
// contents of a /proc/<pid>/status file.
func ParseStatus(b []byte) (Status, error) {
	st := Status{Groups: []uint32{}}
	var haveUID, haveGID bool
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		key, val, ok := bytes.Cut(line, []byte{':'})
		if !ok {
			continue
		}
		switch string(key) {
		case "Uid", "Gid":
			// Real, effective, saved set and filesystem ids.
			fields := bytes.Fields(val)
			if len(fields) < 2 {
				return Status{}, ErrMalformedStatus
			}
			id, err := strconv.ParseUint(string(fields[1]), 10, 32)
			if err != nil {
				return Status{}, ErrMalformedStatus
			}
			if key[0] == 'U' {
				st.EUID, haveUID = uint32(id), true
			} else {
				st.EGID, haveGID = uint32(id), true
			}
		case "Groups":
			for _, g := range bytes.Fields(val) {
				id, err := strconv.ParseUint(string(g), 10, 32)
				if err != nil {
					return Status{}, ErrMalformedStatus
				}
				st.Groups = append(st.Groups, uint32(id))
			}
		}
	}
	if !haveUID || !haveGID {
		return Status{}, ErrMalformedStatus
	}
	return st, nil
}

// ReadStatus reads and parses the status file at path (for example
// /proc/1234/status).
func ReadStatus(path string) (Status, error) {
	var st Status
	err := Read(path, func(b []byte) error {
		var err error
		st, err = ParseStatus(b)
		return err
	})
	return st, err
}
