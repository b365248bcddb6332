// Package revert is the undo stack of a multi-step change (lxc/incus shared/revert): each
// step that mutates something registers how to undo it; on failure Fail runs the undos
// in reverse order, every one of them even when an earlier one failed, and returns each
// failure by name; on success Success drops them.
package revert

import (
	"context"
	"fmt"
)

// Undo is one registered undo.
type Undo struct {
	Name string
	Fn   func(ctx context.Context) error
}

// Result is how one undo went.
type Result struct {
	Name string
	Err  error
}

// Reverter is an undo stack. The zero value is ready to use.
type Reverter struct {
	undos []Undo
}

// Add registers the undo of the step just done.
func (r *Reverter) Add(name string, fn func(ctx context.Context) error) {
	r.undos = append(r.undos, Undo{Name: name, Fn: fn})
}

// Success drops the undos: the change is kept.
func (r *Reverter) Success() { r.undos = nil }

// Fail runs the undos newest first, each once, and returns how each went (in the order
// run). after, when set, is called after each undo (to journal it). A panic in an undo is
// reported as its failure.
func (r *Reverter) Fail(ctx context.Context, after func(Result)) []Result {
	undos := r.undos
	r.undos = nil
	out := make([]Result, 0, len(undos))
	for i := len(undos) - 1; i >= 0; i-- {
		res := Result{Name: undos[i].Name, Err: run(ctx, undos[i])}
		out = append(out, res)
		if after != nil {
			after(res)
		}
	}
	return out
}

func run(ctx context.Context, u Undo) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("undo %s: panic: %v", u.Name, p)
		}
	}()
	return u.Fn(ctx)
}

// Failed returns the failures among results.
func Failed(results []Result) []Result {
	var out []Result
	for _, r := range results {
		if r.Err != nil {
			out = append(out, r)
		}
	}
	return out
}
