// Package grafana holds Sigil's example Grafana dashboards, not Go code:
// sigil-oncall.json (rotation health: alerts, SVID renewal and expiry,
// agents, signing keys, cluster, federation, failure bursts, mTLS denials)
// and sigil-capacity.json (issuance rate and latency, Raft writes, sync
// fan-out, Workload API load and latency). Both take their Prometheus data
// source from a "datasource" variable. Its tests check the dashboards'
// structure and parse every query with promtool.
package grafana
