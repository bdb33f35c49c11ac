package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"os"
	"os/exec"
	"strings"
	"testing"

	adminv1 "github.com/loom-dev/loom/gen/loom/admin/v1"
)

func newMasterKey() string {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return base64.StdEncoding.EncodeToString(k)
}

// TestKeysResealAfterRotation rotates the master key: provider keys stored under the old key are re-sealed by
// `loom keys reseal` while the server runs, after which the old key can go and every value still opens.
func TestKeysResealAfterRotation(t *testing.T) {
	b := bins(t)
	dataDir := t.TempDir()
	oldKey, newKey := newMasterKey(), newMasterKey()
	p := startLoomWith(t, dataDir, append(os.Environ(), "LOOM_MASTER_KEY="+oldKey))
	c := dialAll(t, p.addr)
	ctx := context.Background()
	for _, provider := range []string{"openai", "gemini", "elevenlabs"} {
		if _, err := c.admin.SetProviderKey(ctx, &adminv1.SetProviderKeyRequest{Provider: provider, Key: "sk-canary-" + provider + "-0123456789"}); err != nil {
			t.Fatal(err)
		}
	}
	reseal := func(env ...string) (string, error) {
		cmd := exec.Command(b["loom"], "keys", "reseal", "--data-dir", dataDir)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	// Without the old key the values cannot be opened: reseal says so and changes nothing.
	if out, err := reseal("LOOM_MASTER_KEY=" + newKey); err == nil || strings.Contains(out, "canary") {
		t.Fatalf("reseal without the previous key: err = %v, output %q", err, out)
	}
	// While the server still runs on the old key.
	out, err := reseal("LOOM_MASTER_KEY="+newKey, "LOOM_MASTER_KEY_PREVIOUS="+oldKey)
	if err != nil || !strings.Contains(out, "resealed 3 provider keys; all 3 open") {
		t.Fatalf("reseal: %v\n%s", err, out)
	}
	if out, err := reseal("LOOM_MASTER_KEY="+newKey, "LOOM_MASTER_KEY_PREVIOUS="+oldKey); err != nil || !strings.Contains(out, "resealed 0 provider keys; all 3 open") {
		t.Fatalf("second reseal: %v\n%s", err, out)
	}
	if out, err := reseal("LOOM_MASTER_KEY=" + newKey); err != nil || !strings.Contains(out, "all 3 open") {
		t.Fatalf("check with the new key alone: %v\n%s", err, out)
	}
	if strings.Contains(out, "canary") {
		t.Errorf("reseal printed a provider key: %s", out)
	}
}
