# Who may call the example gRPC service. Deny by default.

rule "client-checks-health" {
  description = "the example client may Check and Watch"
  from = ["spiffe://dev.sigil.local/example/grpc-client"]
  to   = ["grpc:/grpc.health.v1.Health/*"]
}
