package jointoken

import (
	"github.com/hashicorp/hcl/v2"

	"github.com/sigil-id/sigil/attestor/node"
	"github.com/sigil-id/sigil/plugin"
	"github.com/sigil-id/sigil/registration"
)

// The join token attestor is configured as node_attestor "join_token" {},
// on servers and agents alike; the block has no settings. An agent's token
// is a secret and stays out of the block: the daemon reads it from
// join_token_file, SIGIL_JOIN_TOKEN or join_token and passes it in
// plugin.Env.JoinToken. The node selectors it produces have type
// "join_token" (registration.ValidateJoinTokenSelector).
func init() {
	registration.RegisterSelectorType(Name, registration.ValidateJoinTokenSelector)
	plugin.Register(plugin.KindNodeAttestor, Name, pluginNew)
}

// pluginNew builds the half of env.Role.
func pluginNew(body hcl.Body, env plugin.Env) (any, error) {
	if err := plugin.NoSettings(body); err != nil {
		return nil, err
	}
	if env.Role == plugin.RoleAgent {
		return NewAttestor(env.JoinToken), nil
	}
	return NewServerVerifier(), nil
}

// ServerVerifier is the server half as a server is configured with it:
// the verifier (NewVerifier), which also creates join tokens for the admin
// API (NewJoinToken). It holds no state.
type ServerVerifier struct {
	node.Verifier
}

// NewServerVerifier returns the server half.
func NewServerVerifier() *ServerVerifier { return &ServerVerifier{Verifier: NewVerifier()} }

// NewJoinToken returns a new token, the hash the servers store in its
// place (its lowercase hex SHA-256) and the id an agent attesting with it
// gets (the last segment of spiffe://<td>/sigil/agent/join_token/<id>).
func (*ServerVerifier) NewJoinToken() (token, hash, agentID string, err error) {
	token, err = Generate()
	if err != nil {
		return "", "", "", err
	}
	return token, Hash(token), AgentIDSegment(token), nil
}
