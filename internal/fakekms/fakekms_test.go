package fakekms

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// call posts a raw JSON 1.1 request for op, as the AWS SDK does.
func call(t *testing.T, s *Server, op string, in any) (int, map[string]any) {
	t.Helper()
	body, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, s.URL+"/", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "TrentService."+op)
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKID/20261130/eu-west-1/kms/aws4_request, SignedHeaders=host, Signature=00")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatalf("%s: reply %q is not JSON: %v", op, data, err)
	}
	return resp.StatusCode, out
}

func b64(t *testing.T, v any) []byte {
	t.Helper()
	var b []byte
	raw, _ := json.Marshal(v)
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatalf("%v is not base64: %v", v, err)
	}
	return b
}

func TestProtocol(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s := New("eu-west-1", func() time.Time { return now })
	defer s.Close()
	s.RequireAccessKeyID("AKID")

	st, out := call(t, s, "CreateKey", map[string]any{"KeySpec": "ECC_NIST_P384", "KeyUsage": "SIGN_VERIFY"})
	if st != 200 {
		t.Fatalf("CreateKey: %d %v", st, out)
	}
	md := out["KeyMetadata"].(map[string]any)
	id := md["KeyId"].(string)
	if md["KeyState"] != StateEnabled || md["Arn"] != "arn:aws:kms:eu-west-1:111122223333:key/"+id {
		t.Fatalf("metadata = %v", md)
	}

	st, out = call(t, s, "GetPublicKey", map[string]any{"KeyId": id})
	if st != 200 {
		t.Fatalf("GetPublicKey: %d %v", st, out)
	}
	pub, err := x509.ParsePKIXPublicKey(b64(t, out["PublicKey"]))
	if err != nil {
		t.Fatalf("PublicKey is not DER SubjectPublicKeyInfo: %v", err)
	}
	digest := sha512.Sum384([]byte("m"))
	st, out = call(t, s, "Sign", map[string]any{"KeyId": id, "Message": digest[:], "MessageType": "DIGEST", "SigningAlgorithm": "ECDSA_SHA_384"})
	if st != 200 || !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest[:], b64(t, out["Signature"])) {
		t.Fatalf("Sign: %d %v", st, out)
	}
	// Errors are AWS-style JSON with __type.
	for _, tc := range []struct {
		op   string
		in   any
		want string
	}{
		{"Sign", map[string]any{"KeyId": id, "Message": digest[:32], "MessageType": "DIGEST", "SigningAlgorithm": "ECDSA_SHA_384"}, "ValidationException"},
		{"Sign", map[string]any{"KeyId": id, "Message": digest[:], "MessageType": "DIGEST", "SigningAlgorithm": "ECDSA_SHA_256"}, "InvalidKeyUsageException"},
		{"DescribeKey", map[string]any{"KeyId": "alias/none"}, "NotFoundException"},
		{"GetPublicKey", map[string]any{"KeyId": "00000000-0000-0000-0000-000000000000"}, "NotFoundException"},
		{"CreateAlias", map[string]any{"AliasName": "alias/a.b", "TargetKeyId": id}, "ValidationException"},
		{"CreateAlias", map[string]any{"AliasName": "alias/aws/x", "TargetKeyId": id}, "InvalidAliasNameException"},
		{"UpdateAlias", map[string]any{"AliasName": "alias/none", "TargetKeyId": id}, "NotFoundException"},
		{"ScheduleKeyDeletion", map[string]any{"KeyId": id, "PendingWindowInDays": 6}, "ValidationException"},
		{"CreateKey", map[string]any{"KeySpec": "HMAC_256"}, "ValidationException"},
		{"Encrypt", map[string]any{}, "UnknownOperationException"},
	} {
		st, out := call(t, s, tc.op, tc.in)
		if st != 400 || out["__type"] != tc.want || out["message"] == "" {
			t.Errorf("%s %v: %d %v, want 400 %s", tc.op, tc.in, st, out, tc.want)
		}
	}

	// Aliases: create, resolve, list, move, delete.
	st, _ = call(t, s, "CreateAlias", map[string]any{"AliasName": "alias/x/y", "TargetKeyId": id})
	if st != 200 {
		t.Fatal("CreateAlias failed")
	}
	if st, out := call(t, s, "CreateAlias", map[string]any{"AliasName": "alias/x/y", "TargetKeyId": id}); out["__type"] != "AlreadyExistsException" {
		t.Fatalf("second CreateAlias: %d %v", st, out)
	}
	_, out = call(t, s, "DescribeKey", map[string]any{"KeyId": "arn:aws:kms:eu-west-1:111122223333:alias/x/y"})
	if out["KeyMetadata"].(map[string]any)["KeyId"] != id {
		t.Fatalf("DescribeKey by alias ARN: %v", out)
	}
	_, out = call(t, s, "ListAliases", map[string]any{"KeyId": id})
	if a := out["Aliases"].([]any); len(a) != 1 || a[0].(map[string]any)["AliasName"] != "alias/x/y" {
		t.Fatalf("ListAliases: %v", out)
	}
	_, out = call(t, s, "CreateKey", map[string]any{"KeySpec": "RSA_2048"})
	rsaID := out["KeyMetadata"].(map[string]any)["KeyId"].(string)
	if st, out := call(t, s, "UpdateAlias", map[string]any{"AliasName": "alias/x/y", "TargetKeyId": rsaID}); st != 200 || s.Aliases()["alias/x/y"] != rsaID {
		t.Fatalf("UpdateAlias: %d %v", st, out)
	}
	_, out = call(t, s, "GetPublicKey", map[string]any{"KeyId": "alias/x/y"})
	rsaPub, err := x509.ParsePKIXPublicKey(b64(t, out["PublicKey"]))
	if err != nil {
		t.Fatal(err)
	}
	_, out = call(t, s, "Sign", map[string]any{"KeyId": "alias/x/y", "Message": digest[:], "MessageType": "DIGEST", "SigningAlgorithm": "RSASSA_PSS_SHA_384"})
	if err := rsa.VerifyPSS(rsaPub.(*rsa.PublicKey), crypto.SHA384, digest[:], b64(t, out["Signature"]), &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}); err != nil {
		t.Fatalf("RSA PSS signature: %v (%v)", err, out)
	}

	// Deletion: the key turns PendingDeletion and refuses to sign.
	st, out = call(t, s, "ScheduleKeyDeletion", map[string]any{"KeyId": id, "PendingWindowInDays": 7})
	if st != 200 || out["KeyState"] != StatePendingDeletion || out["DeletionDate"] != float64(now.Add(7*24*time.Hour).Unix()) {
		t.Fatalf("ScheduleKeyDeletion: %d %v", st, out)
	}
	if _, out := call(t, s, "Sign", map[string]any{"KeyId": id, "Message": digest[:], "MessageType": "DIGEST", "SigningAlgorithm": "ECDSA_SHA_384"}); out["__type"] != "KMSInvalidStateException" {
		t.Fatalf("Sign with a key pending deletion: %v", out)
	}
	if st, _ := call(t, s, "DeleteAlias", map[string]any{"AliasName": "alias/x/y"}); st != 200 || len(s.Aliases()) != 0 {
		t.Fatal("DeleteAlias failed")
	}
}

func TestFaultsAndChecks(t *testing.T) {
	s := New("eu-west-1", nil)
	defer s.Close()
	s.FailNext("DescribeKey", 1, FaultInternal)
	s.FailNext("*", 1, FaultThrottling)
	if st, out := call(t, s, "DescribeKey", map[string]any{"KeyId": "alias/a"}); st != 500 || out["__type"] != "KMSInternalException" {
		t.Fatalf("injected 500: %d %v", st, out)
	}
	if st, out := call(t, s, "ListAliases", map[string]any{}); st != 400 || out["__type"] != "ThrottlingException" {
		t.Fatalf("injected throttling: %d %v", st, out)
	}
	if st, out := call(t, s, "ListAliases", map[string]any{}); st != 200 {
		t.Fatalf("after the faults: %d %v", st, out)
	}
	if s.Calls("DescribeKey") != 1 || s.Calls("ListAliases") != 2 {
		t.Fatalf("calls: DescribeKey %d, ListAliases %d", s.Calls("DescribeKey"), s.Calls("ListAliases"))
	}

	s.RequireAccessKeyID("OTHER")
	if _, out := call(t, s, "ListAliases", map[string]any{}); out["__type"] != "UnrecognizedClientException" {
		t.Fatalf("wrong access key: %v", out)
	}
	resp, err := http.Post(s.URL+"/", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("request without X-Amz-Target: %d", resp.StatusCode)
	}
}
