// Package fakekms is a local stand-in for AWS KMS, for tests: an HTTP
// server on loopback that speaks the KMS JSON 1.1 protocol (POST /,
// X-Amz-Target: TrentService.<Operation>, application/x-amz-json-1.1,
// errors as {"__type": ..., "message": ...}) for the operations a signing
// key manager needs: CreateKey, DescribeKey, GetPublicKey, Sign,
// ScheduleKeyDeletion, CreateAlias, UpdateAlias, DeleteAlias and
// ListAliases. Keys are real ECDSA P-256/P-384 and RSA keys generated in
// the fake, public keys are DER SubjectPublicKeyInfo and signatures are
// real, so that a client's results can be verified. Faults (5xx,
// throttling, access denied) can be injected per operation, and calls are
// counted.
//
// The fake does not verify request signatures (SigV4); it only checks that
// a request is signed with the expected access key id when one is set.
package fakekms

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// Account is the AWS account id in the fake's ARNs.
const Account = "111122223333"

// Key states, as KMS names them.
const (
	StateEnabled         = "Enabled"
	StatePendingDeletion = "PendingDeletion"
)

// Fault is an error the fake returns instead of handling a request.
type Fault struct {
	// Status is the HTTP status code (e.g. 500, 400).
	Status int
	// Type is the error's __type (e.g. "KMSInternalException",
	// "ThrottlingException", "AccessDeniedException").
	Type string
	// Message is the error's message.
	Message string
}

// Common faults.
var (
	FaultInternal     = Fault{Status: http.StatusInternalServerError, Type: "KMSInternalException", Message: "injected internal error"}
	FaultUnavailable  = Fault{Status: http.StatusServiceUnavailable, Type: "ServiceUnavailableException", Message: "injected unavailability"}
	FaultThrottling   = Fault{Status: http.StatusBadRequest, Type: "ThrottlingException", Message: "Rate exceeded"}
	FaultAccessDenied = Fault{Status: http.StatusBadRequest, Type: "AccessDeniedException", Message: "User: arn:aws:iam::111122223333:user/test is not authorized to perform this operation"}
)

// Key is the fake's record of one KMS key.
type Key struct {
	ID          string
	ARN         string
	Spec        string
	Description string
	Tags        map[string]string
	State       string
	// DeletionDate and PendingWindowInDays are set once deletion is
	// scheduled.
	DeletionDate        time.Time
	PendingWindowInDays int

	signer crypto.Signer
}

// Server is a fake KMS endpoint. Its methods are safe for concurrent use.
type Server struct {
	// URL is the endpoint (http://127.0.0.1:port).
	URL string
	// Region is the region in the fake's ARNs.
	Region string

	srv *httptest.Server
	now func() time.Time

	mu          sync.Mutex
	accessKeyID string
	keys        map[string]*Key
	aliases     map[string]string // alias name -> key id
	calls       map[string]int
	faults      map[string][]Fault
	hooks       map[string]func()
}

// New starts a fake KMS for region on a loopback port. now gives the time
// for creation and deletion dates (time.Now if nil). Close stops it.
func New(region string, now func() time.Time) *Server {
	if now == nil {
		now = time.Now
	}
	s := &Server{
		Region:  region,
		now:     now,
		keys:    map[string]*Key{},
		aliases: map[string]string{},
		calls:   map[string]int{},
		faults:  map[string][]Fault{},
		hooks:   map[string]func(){},
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serveHTTP))
	s.URL = s.srv.URL
	return s
}

// Close stops the server.
func (s *Server) Close() { s.srv.Close() }

// RequireAccessKeyID makes the fake refuse requests not signed with the
// access key id id (UnrecognizedClientException).
func (s *Server) RequireAccessKeyID(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.accessKeyID = id
}

// FailNext makes the next n requests for op (an operation name such as
// "Sign", or "*" for any) fail with f.
func (s *Server) FailNext(op string, n int, f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.faults[op] = append(s.faults[op], f)
	}
}

// OnRequest makes the fake call fn (once) when the next request for op
// arrives, before handling it; fn must not call the Server's methods.
func (s *Server) OnRequest(op string, fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hooks[op] = fn
}

// Calls returns how many requests for op the fake received, faults
// included.
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// Key returns a copy of the key whose id is id.
func (s *Server) Key(id string) (Key, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[id]
	if !ok {
		return Key{}, false
	}
	return *k, true
}

// PublicKey returns the public key of the key whose id is id.
func (s *Server) PublicKey(id string) (crypto.PublicKey, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[id]
	if !ok {
		return nil, false
	}
	return k.signer.Public(), true
}

// PrivateKeyDER returns the PKCS#8 DER encoding of the private key whose
// id is id, for tests that scan a client's files for leaked key material
// (a real KMS never reveals it).
func (s *Server) PrivateKeyDER(id string) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[id]
	if !ok {
		return nil, false
	}
	der, err := x509.MarshalPKCS8PrivateKey(k.signer)
	return der, err == nil
}

// Keys returns the ids of all keys, sorted.
func (s *Server) Keys() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ids := make([]string, 0, len(s.keys))
	for id := range s.keys {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Aliases returns a copy of the alias table (alias name -> key id).
func (s *Server) Aliases() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.aliases))
	for a, id := range s.aliases {
		out[a] = id
	}
	return out
}

// apiError is an error reply.
type apiError struct {
	status int
	typ    string
	msg    string
}

func errorf(status int, typ, format string, args ...any) *apiError {
	return &apiError{status: status, typ: typ, msg: fmt.Sprintf(format, args...)}
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	const targetPrefix = "TrentService."
	target := r.Header.Get("X-Amz-Target")
	op := strings.TrimPrefix(target, targetPrefix)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[op]++
	if fn := s.hooks[op]; fn != nil {
		delete(s.hooks, op)
		fn()
	}
	if f, ok := s.nextFault(op); ok {
		writeError(w, &apiError{status: f.Status, typ: f.Type, msg: f.Message})
		return
	}
	switch {
	case r.Method != http.MethodPost || r.URL.Path != "/":
		writeError(w, errorf(http.StatusNotFound, "UnknownOperationException", "%s %s is not a KMS endpoint", r.Method, r.URL.Path))
		return
	case !strings.HasPrefix(target, targetPrefix):
		writeError(w, errorf(http.StatusBadRequest, "UnknownOperationException", "X-Amz-Target %q is not a TrentService operation", target))
		return
	case r.Header.Get("Content-Type") != "application/x-amz-json-1.1":
		writeError(w, errorf(http.StatusBadRequest, "SerializationException", "Content-Type %q is not application/x-amz-json-1.1", r.Header.Get("Content-Type")))
		return
	}
	if s.accessKeyID != "" && !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 Credential="+s.accessKeyID+"/") {
		writeError(w, errorf(http.StatusBadRequest, "UnrecognizedClientException", "The security token included in the request is invalid."))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeError(w, errorf(http.StatusBadRequest, "SerializationException", "reading body: %v", err))
		return
	}
	out, aerr := s.handle(op, body)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	_ = json.NewEncoder(w).Encode(out)
}

func (s *Server) nextFault(op string) (Fault, bool) {
	for _, k := range []string{op, "*"} {
		if q := s.faults[k]; len(q) > 0 {
			s.faults[k] = q[1:]
			return q[0], true
		}
	}
	return Fault{}, false
}

func writeError(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(e.status)
	_ = json.NewEncoder(w).Encode(map[string]string{"__type": e.typ, "message": e.msg})
}

// handle dispatches one decoded request; s.mu is held.
func (s *Server) handle(op string, body []byte) (any, *apiError) {
	decode := func(v any) *apiError {
		if err := json.Unmarshal(body, v); err != nil {
			return errorf(http.StatusBadRequest, "SerializationException", "decoding %s request: %v", op, err)
		}
		return nil
	}
	switch op {
	case "CreateKey":
		var in createKeyInput
		if e := decode(&in); e != nil {
			return nil, e
		}
		return s.createKey(in)
	case "DescribeKey":
		var in keyIDInput
		if e := decode(&in); e != nil {
			return nil, e
		}
		k, e := s.resolve(in.KeyID)
		if e != nil {
			return nil, e
		}
		return map[string]any{"KeyMetadata": s.metadata(k)}, nil
	case "GetPublicKey":
		var in keyIDInput
		if e := decode(&in); e != nil {
			return nil, e
		}
		return s.getPublicKey(in.KeyID)
	case "Sign":
		var in signInput
		if e := decode(&in); e != nil {
			return nil, e
		}
		return s.sign(in)
	case "ScheduleKeyDeletion":
		var in scheduleInput
		if e := decode(&in); e != nil {
			return nil, e
		}
		return s.scheduleDeletion(in)
	case "CreateAlias", "UpdateAlias":
		var in aliasInput
		if e := decode(&in); e != nil {
			return nil, e
		}
		return s.setAlias(in, op == "CreateAlias")
	case "DeleteAlias":
		var in aliasInput
		if e := decode(&in); e != nil {
			return nil, e
		}
		if _, ok := s.aliases[in.AliasName]; !ok {
			return nil, errorf(http.StatusBadRequest, "NotFoundException", "Alias %s is not found.", s.aliasARN(in.AliasName))
		}
		delete(s.aliases, in.AliasName)
		return struct{}{}, nil
	case "ListAliases":
		var in listAliasesInput
		if e := decode(&in); e != nil {
			return nil, e
		}
		return s.listAliases(in)
	default:
		return nil, errorf(http.StatusBadRequest, "UnknownOperationException", "operation %q is not supported by the fake", op)
	}
}

type keyIDInput struct {
	KeyID string `json:"KeyId"`
}

type createKeyInput struct {
	KeySpec     string
	KeyUsage    string
	Description string
	Tags        []struct{ TagKey, TagValue string }
}

type signInput struct {
	KeyID            string `json:"KeyId"`
	Message          []byte
	MessageType      string
	SigningAlgorithm string
}

type scheduleInput struct {
	KeyID               string `json:"KeyId"`
	PendingWindowInDays *int
}

type aliasInput struct {
	AliasName   string
	TargetKeyID string `json:"TargetKeyId"`
}

type listAliasesInput struct {
	KeyID  string `json:"KeyId"`
	Limit  int
	Marker string
}

func (s *Server) createKey(in createKeyInput) (any, *apiError) {
	if in.KeyUsage != "" && in.KeyUsage != "SIGN_VERIFY" {
		return nil, errorf(http.StatusBadRequest, "ValidationException", "the fake only creates SIGN_VERIFY keys, not %q", in.KeyUsage)
	}
	var (
		signer crypto.Signer
		err    error
	)
	switch in.KeySpec {
	case "ECC_NIST_P256":
		signer, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ECC_NIST_P384":
		signer, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "RSA_2048":
		signer, err = rsa.GenerateKey(rand.Reader, 2048)
	case "RSA_3072":
		signer, err = rsa.GenerateKey(rand.Reader, 3072)
	default:
		return nil, errorf(http.StatusBadRequest, "ValidationException", "KeySpec %q is not supported", in.KeySpec)
	}
	if err != nil {
		return nil, errorf(http.StatusInternalServerError, "KMSInternalException", "generating key: %v", err)
	}
	var raw [16]byte
	_, _ = rand.Read(raw[:])
	h := hex.EncodeToString(raw[:])
	id := h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	k := &Key{
		ID:          id,
		ARN:         fmt.Sprintf("arn:aws:kms:%s:%s:key/%s", s.Region, Account, id),
		Spec:        in.KeySpec,
		Description: in.Description,
		Tags:        map[string]string{},
		State:       StateEnabled,
		signer:      signer,
	}
	for _, t := range in.Tags {
		k.Tags[t.TagKey] = t.TagValue
	}
	s.keys[id] = k
	return map[string]any{"KeyMetadata": s.metadata(k)}, nil
}

func (s *Server) metadata(k *Key) map[string]any {
	m := map[string]any{
		"AWSAccountId":      Account,
		"Arn":               k.ARN,
		"KeyId":             k.ID,
		"CreationDate":      s.now().Unix(),
		"Description":       k.Description,
		"Enabled":           k.State == StateEnabled,
		"KeyManager":        "CUSTOMER",
		"KeySpec":           k.Spec,
		"KeyState":          k.State,
		"KeyUsage":          "SIGN_VERIFY",
		"Origin":            "AWS_KMS",
		"SigningAlgorithms": signingAlgorithms(k.Spec),
	}
	if k.State == StatePendingDeletion {
		m["DeletionDate"] = k.DeletionDate.Unix()
		m["PendingDeletionWindowInDays"] = k.PendingWindowInDays
	}
	return m
}

func signingAlgorithms(spec string) []string {
	switch spec {
	case "ECC_NIST_P256":
		return []string{"ECDSA_SHA_256"}
	case "ECC_NIST_P384":
		return []string{"ECDSA_SHA_384"}
	default:
		return []string{"RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
			"RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512"}
	}
}

func (s *Server) aliasARN(name string) string {
	return fmt.Sprintf("arn:aws:kms:%s:%s:%s", s.Region, Account, name)
}

// resolve finds the key named by a key id, key ARN, alias name or alias
// ARN.
func (s *Server) resolve(ref string) (*Key, *apiError) {
	if ref == "" {
		return nil, errorf(http.StatusBadRequest, "ValidationException", "KeyId is required")
	}
	id := ref
	switch {
	case strings.HasPrefix(ref, "alias/"), strings.Contains(ref, ":alias/"):
		name := ref[strings.Index(ref, "alias/"):]
		var ok bool
		if id, ok = s.aliases[name]; !ok {
			return nil, errorf(http.StatusBadRequest, "NotFoundException", "Alias %s is not found.", s.aliasARN(name))
		}
	case strings.HasPrefix(ref, "arn:"):
		id = ref[strings.LastIndex(ref, "/")+1:]
	}
	k, ok := s.keys[id]
	if !ok {
		return nil, errorf(http.StatusBadRequest, "NotFoundException", "Key '%s' does not exist", fmt.Sprintf("arn:aws:kms:%s:%s:key/%s", s.Region, Account, id))
	}
	return k, nil
}

func (s *Server) usable(k *Key) *apiError {
	if k.State != StateEnabled {
		return errorf(http.StatusBadRequest, "KMSInvalidStateException", "%s is pending deletion.", k.ARN)
	}
	return nil
}

func (s *Server) getPublicKey(ref string) (any, *apiError) {
	k, e := s.resolve(ref)
	if e != nil {
		return nil, e
	}
	if e := s.usable(k); e != nil {
		return nil, e
	}
	der, err := x509.MarshalPKIXPublicKey(k.signer.Public())
	if err != nil {
		return nil, errorf(http.StatusInternalServerError, "KMSInternalException", "encoding public key: %v", err)
	}
	return map[string]any{
		"KeyId":             k.ARN,
		"KeySpec":           k.Spec,
		"KeyUsage":          "SIGN_VERIFY",
		"PublicKey":         der,
		"SigningAlgorithms": signingAlgorithms(k.Spec),
	}, nil
}

func (s *Server) sign(in signInput) (any, *apiError) {
	k, e := s.resolve(in.KeyID)
	if e != nil {
		return nil, e
	}
	if e := s.usable(k); e != nil {
		return nil, e
	}
	supported := false
	for _, a := range signingAlgorithms(k.Spec) {
		supported = supported || a == in.SigningAlgorithm
	}
	if !supported {
		return nil, errorf(http.StatusBadRequest, "InvalidKeyUsageException", "SigningAlgorithm %q is not supported by the key spec %s", in.SigningAlgorithm, k.Spec)
	}
	var h crypto.Hash
	switch {
	case strings.HasSuffix(in.SigningAlgorithm, "_256"):
		h = crypto.SHA256
	case strings.HasSuffix(in.SigningAlgorithm, "_384"):
		h = crypto.SHA384
	default:
		h = crypto.SHA512
	}
	digest := in.Message
	switch in.MessageType {
	case "", "RAW":
		if len(in.Message) > 4096 {
			return nil, errorf(http.StatusBadRequest, "ValidationException", "Message is longer than 4096 bytes")
		}
		hh := h.New()
		hh.Write(in.Message)
		digest = hh.Sum(nil)
	case "DIGEST":
		if len(digest) != h.Size() {
			return nil, errorf(http.StatusBadRequest, "ValidationException", "Digest is %d bytes, %s needs %d", len(digest), in.SigningAlgorithm, h.Size())
		}
	default:
		return nil, errorf(http.StatusBadRequest, "ValidationException", "MessageType %q is not supported", in.MessageType)
	}
	var opts crypto.SignerOpts = h
	if strings.HasPrefix(in.SigningAlgorithm, "RSASSA_PSS_") {
		opts = &rsa.PSSOptions{Hash: h, SaltLength: rsa.PSSSaltLengthEqualsHash}
	}
	sig, err := k.signer.Sign(rand.Reader, digest, opts)
	if err != nil {
		return nil, errorf(http.StatusInternalServerError, "KMSInternalException", "signing: %v", err)
	}
	return map[string]any{"KeyId": k.ARN, "Signature": sig, "SigningAlgorithm": in.SigningAlgorithm}, nil
}

func (s *Server) scheduleDeletion(in scheduleInput) (any, *apiError) {
	k, e := s.resolve(in.KeyID)
	if e != nil {
		return nil, e
	}
	days := 30
	if in.PendingWindowInDays != nil {
		days = *in.PendingWindowInDays
	}
	if days < 7 || days > 30 {
		return nil, errorf(http.StatusBadRequest, "ValidationException", "PendingWindowInDays %d is not between 7 and 30", days)
	}
	if e := s.usable(k); e != nil {
		return nil, e
	}
	k.State = StatePendingDeletion
	k.PendingWindowInDays = days
	k.DeletionDate = s.now().Add(time.Duration(days) * 24 * time.Hour)
	return map[string]any{
		"KeyId":               k.ARN,
		"DeletionDate":        k.DeletionDate.Unix(),
		"KeyState":            k.State,
		"PendingWindowInDays": days,
	}, nil
}

var aliasRE = regexp.MustCompile(`^alias/[a-zA-Z0-9/_-]+$`)

func (s *Server) setAlias(in aliasInput, create bool) (any, *apiError) {
	if !aliasRE.MatchString(in.AliasName) || len(in.AliasName) > 256 {
		return nil, errorf(http.StatusBadRequest, "ValidationException", "AliasName %q does not match %s or is longer than 256 characters", in.AliasName, aliasRE)
	}
	if strings.HasPrefix(in.AliasName, "alias/aws/") {
		return nil, errorf(http.StatusBadRequest, "InvalidAliasNameException", "alias/aws/ is reserved")
	}
	_, exists := s.aliases[in.AliasName]
	switch {
	case create && exists:
		return nil, errorf(http.StatusBadRequest, "AlreadyExistsException", "An alias with the name %s already exists", s.aliasARN(in.AliasName))
	case !create && !exists:
		return nil, errorf(http.StatusBadRequest, "NotFoundException", "Alias %s is not found.", s.aliasARN(in.AliasName))
	}
	if strings.Contains(in.TargetKeyID, "alias/") {
		return nil, errorf(http.StatusBadRequest, "ValidationException", "TargetKeyId must name a key, not an alias")
	}
	k, e := s.resolve(in.TargetKeyID)
	if e != nil {
		return nil, e
	}
	if e := s.usable(k); e != nil {
		return nil, e
	}
	s.aliases[in.AliasName] = k.ID
	return struct{}{}, nil
}

func (s *Server) listAliases(in listAliasesInput) (any, *apiError) {
	var keyID string
	if in.KeyID != "" {
		k, e := s.resolve(in.KeyID)
		if e != nil {
			return nil, e
		}
		keyID = k.ID
	}
	names := make([]string, 0, len(s.aliases))
	for a, id := range s.aliases {
		if keyID == "" || id == keyID {
			names = append(names, a)
		}
	}
	sort.Strings(names)
	start := 0
	if in.Marker != "" {
		start = sort.SearchStrings(names, in.Marker)
	}
	limit := in.Limit
	if limit <= 0 || limit > 100 {
		limit = 50
	}
	end := min(start+limit, len(names))
	entries := []map[string]any{}
	for _, a := range names[start:end] {
		entries = append(entries, map[string]any{"AliasName": a, "AliasArn": s.aliasARN(a), "TargetKeyId": s.aliases[a]})
	}
	out := map[string]any{"Aliases": entries, "Truncated": end < len(names)}
	if end < len(names) {
		out["NextMarker"] = names[end]
	}
	return out, nil
}
