# Who may call the gcp.example greeter. Deny by default: only what a rule
# allows gets through. A rule may name workloads of a federated trust
# domain; their SVIDs verify because the greeter's entry federates with it.

rule "aws-client-says-hello" {
  description = "the aws.example example client may call GET /hello"
  from = ["spiffe://aws.example/example/client"]
  to   = ["http:GET /hello"]
}
