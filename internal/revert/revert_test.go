package revert

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// Undos run newest first, every one even after a failure or a panic, and each failure is
// returned by name; Success drops them.
func TestFail(t *testing.T) {
	var ran []string
	r := &Reverter{}
	add := func(name string, err error) {
		r.Add(name, func(context.Context) error { ran = append(ran, name); return err })
	}
	add("config", nil)
	add("guest dir", errors.New("busy"))
	r.Add("panics", func(context.Context) error { ran = append(ran, "panics"); panic("boom") })
	add("run state", nil)
	var journaled []string
	res := r.Fail(context.Background(), func(x Result) { journaled = append(journaled, x.Name) })
	if diff := cmp.Diff(ran, []string{"run state", "panics", "guest dir", "config"}); diff != "" {
		t.Errorf("order (-got +want)\n%s", diff)
	}
	if diff := cmp.Diff(journaled, ran); diff != "" {
		t.Errorf("after callbacks (-got +want)\n%s", diff)
	}
	var failed []string
	for _, f := range Failed(res) {
		failed = append(failed, f.Name)
	}
	if diff := cmp.Diff(failed, []string{"panics", "guest dir"}); diff != "" {
		t.Errorf("failed (-got +want)\n%s", diff)
	}
	if again := r.Fail(context.Background(), nil); len(again) != 0 {
		t.Errorf("undos ran twice: %v", again)
	}
	r.Add("x", func(context.Context) error { t.Error("undo after Success ran"); return nil })
	r.Success()
	r.Fail(context.Background(), nil)
}
