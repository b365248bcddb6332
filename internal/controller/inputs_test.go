package controller

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gpupass/internal/inputlimit"
)

// A saved plan is size-checked before it is decoded.
func TestLoadPlanDigestsRefusesHugeFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "plan.json")
	if err := os.WriteFile(p, []byte(`{"containers":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, inputlimit.PlanJSON+1); err != nil {
		t.Fatal(err)
	}
	_, err := LoadPlanDigests(p)
	if !errors.Is(err, inputlimit.ErrTooLarge) || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v, want ErrTooLarge naming the file", err)
	}
}
