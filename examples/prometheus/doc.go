// Package prometheus holds Sigil's example Prometheus files, not Go code:
// sigil-rules.yml (alerting rules equivalent to the alerts the servers
// raise themselves, package health), sigil-rules.test.yml (their promtool
// unit tests) and prometheus.yml (a sample scrape configuration). Its tests
// run promtool on them, so a change to a rule, a test or a metric name is
// checked by go test.
package prometheus
