package cli

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// FuzzDataFile feeds arbitrary -data documents to the reader: it never
// panics, an error is a usage error naming the file, and every item it
// hands on is one complete JSON value that the entry and id decoders
// accept or refuse with a usage error.
func FuzzDataFile(f *testing.F) {
	for _, s := range []string{
		"[" + entryJSON(1) + "," + entryJSON(2) + "]",
		entryJSON(1) + "\n" + entryJSON(2) + "\n",
		`{"entries": [` + entryJSON(1) + `], "next_page_token": ""}`,
		`["e1", "e2"]`, `"e1" "e2"`, `{"entries": []}`, `[]`, ``, `{`, `[{"spiffe_id": 1}]`,
		`{"entries": [` + entryJSON(1) + `], "x": 1}`, `[` + entryJSON(1) + `] ]`, "\xff", `{"federates_with": ["spiffe://a/b"]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		isUsage := func(err error) bool {
			var ee *ExitError
			return errors.As(err, &ee) && ee.Code == ExitUsage && strings.HasPrefix(err.Error(), "-data f")
		}
		items := 0
		err := scanItems("f", strings.NewReader(string(data)), func(i int, raw json.RawMessage) error {
			if i != items || !json.Valid(raw) {
				t.Fatalf("item %d (want %d) is not one JSON value: %q", i, items, raw)
			}
			items++
			if _, err := decodeEntry("f", i, raw); err != nil && !isUsage(err) {
				t.Fatalf("decodeEntry: %v", err)
			}
			if _, err := decodeID("f", i, raw); err != nil && !isUsage(err) {
				t.Fatalf("decodeID: %v", err)
			}
			return nil
		})
		if err != nil && !isUsage(err) {
			t.Fatalf("scanItems(%q): %v", data, err)
		}
		if err == nil && items == 0 {
			t.Fatalf("scanItems(%q) accepted a document without items", data)
		}
	})
}
