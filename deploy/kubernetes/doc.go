// Package kubernetes holds the checks of Loom's Kubernetes manifests: the kustomize base, the example overlay
// and the service-mesh component in this directory. No cluster runs in CI, so the test renders each
// kustomization with kustomize's own library, decodes every object strictly into the k8s.io/api types (an
// unknown or misspelt field fails), and checks the result against what `loom serve --help` says it reads.
//
// It is a module of its own so that kustomize and k8s.io/api stay out of Loom's go.mod.
package kubernetes
