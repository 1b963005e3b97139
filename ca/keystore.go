package ca

import "context"

// KeyScope names one of the sets of keys a server keeps apart, each in a
// KeyManager of its own.
type KeyScope string

// The scopes a server opens.
const (
	// KeyScopeAuthorities holds the server's X.509 CA and JWT signing
	// keys (the prepared, active and retired slots).
	KeyScopeAuthorities KeyScope = "authorities"
	// KeyScopeClusterIdentity holds the key of the server's cluster
	// identity CA, which authenticates it to its peers.
	KeyScopeClusterIdentity KeyScope = "cluster_identity"
)

// KeyStore is a key manager plugin as a server uses it: it opens the
// KeyManager of each scope. Implementations live in ca/keymanager/<name>
// and are built from configuration; a server receives one as a value.
// A KeyStore that holds sessions or clients (an HSM, a KMS) implements
// io.Closer; its owner (cmd/sigil) closes it after the server stopped,
// and the signers it returned fail from then on.
type KeyStore interface {
	// OpenKeyManager returns the KeyManager of scope, creating what it
	// needs (a directory) only now, so that building a KeyStore from
	// configuration writes nothing. A server calls it once per scope each
	// time it runs. An unknown scope is an error.
	OpenKeyManager(ctx context.Context, scope KeyScope) (KeyManager, error)
	// Persistent reports whether keys survive a restart of the process.
	// When false the server keeps no state that names them either (the
	// authority slots, the cluster identity CA certificate): they start
	// afresh with the process.
	Persistent() bool
}
