// Package e2e holds the end-to-end suite of the split deployment: it reads compose.yaml with the official
// compose-spec loader, runs every Loom service of it (replicas included) as a `loom serve` process on loopback
// against a private PostgreSQL cluster, and tests the deployment the way its users run it: through the gateway
// with grpcurl, grpc-go, Connect JSON over plain HTTP and Connect-Web in Chromium, then with faults (kill -9
// of replicas, a Postgres restart, SIGTERM). Everything lives in the tests; this file only documents the package.
package e2e
