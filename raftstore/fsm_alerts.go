package raftstore

import (
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/sigil-id/sigil/internal/storepb"
)

// Alerts: the rotation-health alerts the leader raised and that still
// fire, one row per dedupe key (tableAlerts). The leader writes them with
// UpdateAlerts so that every server lists them and the next leader
// resolves those whose condition is gone.
const (
	// MaxAlerts bounds the firing alerts the store holds.
	MaxAlerts = 1024
	// MaxAlertKeyLen bounds an alert's dedupe key, in bytes.
	MaxAlertKeyLen = 256
	// MaxAlertNameLen bounds an alert's name, in bytes.
	MaxAlertNameLen = 128
	// MaxAlertSummaryLen bounds an alert's summary, in bytes.
	MaxAlertSummaryLen = 1024
	// MaxAlertDetails bounds the details of one alert.
	MaxAlertDetails = 32
	// MaxAlertDetailKeyLen and MaxAlertDetailValueLen bound one detail,
	// in bytes.
	MaxAlertDetailKeyLen   = 64
	MaxAlertDetailValueLen = 1024
	// MaxAlertSourceLen bounds the name of the server that raised an
	// alert, in bytes.
	MaxAlertSourceLen = 256
	// MaxAlertURLLen bounds an alert's generator URL, in bytes.
	MaxAlertURLLen = 2048
)

// checkAlertKey checks a dedupe key: set, at most MaxAlertKeyLen bytes,
// valid UTF-8.
func checkAlertKey(key string) *CommandError {
	switch {
	case key == "":
		return cmdErr(codes.InvalidArgument, "alert key is empty")
	case len(key) > MaxAlertKeyLen:
		return cmdErr(codes.InvalidArgument, "alert key of %d bytes is too long (at most %d)", len(key), MaxAlertKeyLen)
	case !utf8.ValidString(key):
		return cmdErr(codes.InvalidArgument, "alert key is not valid UTF-8")
	}
	return nil
}

// validateAlert checks an alert record's fields (modify_index, set by the
// store, is not checked).
func validateAlert(r *storepb.AlertRecord) *CommandError {
	if r == nil {
		return cmdErr(codes.InvalidArgument, "alert record is missing")
	}
	if err := checkAlertKey(r.Key); err != nil {
		return err
	}
	bad := func(format string, args ...any) *CommandError {
		return cmdErr(codes.InvalidArgument, "alert %q: "+format, append([]any{r.Key}, args...)...)
	}
	switch r.Severity {
	case "info", "warning", "critical":
	default:
		return bad("severity %q is not info, warning or critical", r.Severity)
	}
	switch {
	case r.Name == "":
		return bad("name is empty")
	case len(r.Name) > MaxAlertNameLen:
		return bad("name is longer than %d bytes", MaxAlertNameLen)
	case len(r.Summary) > MaxAlertSummaryLen:
		return bad("summary is longer than %d bytes", MaxAlertSummaryLen)
	case len(r.Source) > MaxAlertSourceLen:
		return bad("source is longer than %d bytes", MaxAlertSourceLen)
	case len(r.GeneratorUrl) > MaxAlertURLLen:
		return bad("generator_url is longer than %d bytes", MaxAlertURLLen)
	case r.StartsAt < 0:
		return bad("starts_at is negative")
	case len(r.Details) > MaxAlertDetails:
		return bad("%d details, at most %d allowed", len(r.Details), MaxAlertDetails)
	}
	for k, v := range r.Details {
		switch {
		case k == "":
			return bad("a detail has an empty key")
		case len(k) > MaxAlertDetailKeyLen:
			return bad("detail key of %d bytes is too long (at most %d)", len(k), MaxAlertDetailKeyLen)
		case len(v) > MaxAlertDetailValueLen:
			return bad("detail %q is longer than %d bytes", k, MaxAlertDetailValueLen)
		}
	}
	return nil
}

func (a *applier) alert(key string) *storepb.AlertRecord {
	raw, err := a.txn.First(tableAlerts, indexID, key)
	if err != nil || raw == nil {
		return nil
	}
	return raw.(*storepb.AlertRecord)
}

func (a *applier) countAlerts() (int, *CommandError) {
	it, err := a.txn.Get(tableAlerts, indexID)
	if err != nil {
		return 0, cmdErr(codes.Internal, "counting alerts: %v", err)
	}
	n := 0
	for raw := it.Next(); raw != nil; raw = it.Next() {
		n++
	}
	return n, nil
}

// updateAlerts applies UpdateAlerts: every record and key is checked, and
// the firing count after the update bounded, before anything is written,
// so that a refused command changes nothing. A fired record equal to the
// stored one (modify_index aside) is left as it is; a resolved key that
// is not stored is ignored.
func (a *applier) updateAlerts(c *storepb.UpdateAlerts) *CommandError {
	if c == nil {
		return cmdErr(codes.InvalidArgument, "update_alerts is missing")
	}
	if n := len(c.Fired); n > MaxAlerts {
		return cmdErr(codes.InvalidArgument, "%d alerts fired in one command, at most %d allowed", n, MaxAlerts)
	}
	if n := len(c.Resolved); n > MaxAlerts {
		return cmdErr(codes.InvalidArgument, "%d alerts resolved in one command, at most %d allowed", n, MaxAlerts)
	}
	fired := make(map[string]bool, len(c.Fired))
	for _, r := range c.Fired {
		if err := validateAlert(r); err != nil {
			return err
		}
		if fired[r.Key] {
			return cmdErr(codes.InvalidArgument, "alert %q is fired twice in one command", r.Key)
		}
		fired[r.Key] = true
	}
	resolved := make(map[string]bool, len(c.Resolved))
	for _, key := range c.Resolved {
		if err := checkAlertKey(key); err != nil {
			return err
		}
		if resolved[key] {
			return cmdErr(codes.InvalidArgument, "alert %q is resolved twice in one command", key)
		}
		if fired[key] {
			return cmdErr(codes.InvalidArgument, "alert %q is both fired and resolved in one command", key)
		}
		resolved[key] = true
	}
	n, err := a.countAlerts()
	if err != nil {
		return err
	}
	var gone []*storepb.AlertRecord
	for _, key := range c.Resolved {
		if old := a.alert(key); old != nil {
			gone = append(gone, old)
		}
	}
	added := 0
	for _, r := range c.Fired {
		if a.alert(r.Key) == nil {
			added++
		}
	}
	if after := n - len(gone) + added; after > MaxAlerts {
		return cmdErr(codes.ResourceExhausted, "the update would leave %d alerts firing, at most %d are kept", after, MaxAlerts)
	}
	for _, old := range gone {
		if err := a.delete(tableAlerts, old); err != nil {
			return err
		}
	}
	for _, r := range c.Fired {
		// r was decoded from this log entry alone, so the FSM owns it.
		old := a.alert(r.Key)
		if old != nil {
			r.ModifyIndex = old.ModifyIndex
			if proto.Equal(old, r) {
				continue
			}
		}
		r.ModifyIndex = a.index
		if err := a.insert(tableAlerts, r); err != nil {
			return err
		}
	}
	return nil
}

// CheckAlertRecord reports whether UpdateAlerts would accept r (its
// modify_index, which the store sets, aside), so that the leader records
// only what the store takes: one bad record refuses the whole command.
func CheckAlertRecord(r *storepb.AlertRecord) error {
	if err := validateAlert(r); err != nil {
		return err
	}
	return nil
}
