package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// JSON output (docs/cli.md, "JSON output"). Every read command takes
// -output json. Commands that print an API message print its protojson
// with the .proto field names (snake_case), every field present (false, 0,
// "" and [] included, an unset message as null), 64-bit integers as
// strings and bytes as base64, as the proto3 JSON mapping says; printJSON
// writes it. Commands whose answer is not one API message print an
// explicit struct whose field names are documented in docs/cli.md, with
// times in RFC 3339 (UTC); printValue writes it. Both are indented with
// two spaces and end with a newline.

// jsonOptions are the protojson options of every JSON output (printJSON
// uses the same).
var jsonOptions = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// printValue writes v as indented JSON.
func printValue(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// protoField is one extra top-level field added to a message's JSON.
type protoField struct {
	name  string
	value proto.Message // nil prints null
}

// printJSONWith writes m as printJSON does, with extra top-level fields
// after m's own (for commands that show one message and something about
// it, such as a relationship and the state of its bundle).
func printJSONWith(w io.Writer, m proto.Message, extra ...protoField) error {
	b, err := jsonOptions.Marshal(m)
	if err != nil {
		return err
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, b); err != nil {
		return err
	}
	obj := bytes.TrimSuffix(compact.Bytes(), []byte("}"))
	for _, f := range extra {
		v := []byte("null")
		if f.value != nil && f.value.ProtoReflect().IsValid() {
			if v, err = jsonOptions.Marshal(f.value); err != nil {
				return err
			}
		}
		if len(obj) > 1 {
			obj = append(obj, ',')
		}
		obj = append(obj, fmt.Sprintf("%q:", f.name)...)
		obj = append(obj, v...)
	}
	obj = append(obj, '}')
	var buf bytes.Buffer
	if err := json.Indent(&buf, obj, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}
