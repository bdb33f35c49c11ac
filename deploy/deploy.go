// Package deploy holds the checks of Loom's deployment files (compose.yaml and the Dockerfile at the top of the
// repository). No Docker engine runs in CI, so the compose file is loaded and validated with the official
// compose-spec loader instead of being started.
package deploy
