# Who may call the example greeter service. Deny by default: only what a
# rule allows gets through. The server reloads this file when it changes.

rule "client-says-hello" {
  description = "the example client may call GET /hello"
  from = ["spiffe://dev.sigil.local/example/http-client"]
  to   = ["http:GET /hello"]
}
