package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestRunEventRetentionFlag checks --run-event-retention and its env: off by default, a duration of at least an
// hour, refused naming the flag otherwise.
func TestRunEventRetentionFlag(t *testing.T) {
	t.Parallel()
	none := func(string) string { return "" }
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	if cfg, err := parseServe(nil, none, devnull); err != nil || cfg.RunEventRetention != 0 {
		t.Errorf("default = %v, %v; want 0 (keep forever)", cfg.RunEventRetention, err)
	}
	if cfg, err := parseServe([]string{"--run-event-retention", "720h"}, none, devnull); err != nil || cfg.RunEventRetention != 720*time.Hour {
		t.Errorf("--run-event-retention 720h = %v, %v", cfg.RunEventRetention, err)
	}
	env := func(k string) string {
		if k == "LOOM_RUN_EVENT_RETENTION" {
			return "48h"
		}
		return ""
	}
	if cfg, err := parseServe(nil, env, devnull); err != nil || cfg.RunEventRetention != 48*time.Hour {
		t.Errorf("LOOM_RUN_EVENT_RETENTION=48h = %v, %v", cfg.RunEventRetention, err)
	}
	for _, bad := range []string{"30m", "-1h", "soon"} {
		if _, err := parseServe([]string{"--run-event-retention", bad}, none, devnull); err == nil || !strings.Contains(err.Error(), "--run-event-retention") {
			t.Errorf("--run-event-retention %s: err = %v", bad, err)
		}
	}
}
