package blueprint_test

import (
	"os"
	"path/filepath"
	"testing"

	orchestratorv1 "github.com/loom-dev/loom/gen/loom/orchestrator/v1"
	"github.com/loom-dev/loom/orchestrator/blueprint"
)

// TestExamples parses and validates every blueprint in the repository's examples directory.
func TestExamples(t *testing.T) {
	t.Parallel()
	var files []string
	for _, pattern := range []string{"*.yaml", "*.yml", "*.json"} {
		m, err := filepath.Glob(filepath.Join("..", "..", "examples", pattern))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Fatal("no examples found")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			bp, errs := blueprint.Load(&orchestratorv1.BlueprintSource{Source: &orchestratorv1.BlueprintSource_Yaml{Yaml: string(src)}})
			if len(errs) > 0 || bp == nil {
				t.Fatalf("%s does not validate: %v", f, format(errs))
			}
		})
	}
}
