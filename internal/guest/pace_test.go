package guest

import (
	"testing"
	"time"
)

func TestPacer(t *testing.T) {
	t0 := time.Unix(1000, 0)
	p := newPacer(10, 3, t0)
	for i := 0; i < 3; i++ {
		if d := p.take(t0); d != 0 {
			t.Fatalf("take %d of the burst waited %v", i, d)
		}
	}
	if d := p.take(t0); d != 100*time.Millisecond {
		t.Errorf("take after the burst = %v, want 100ms", d)
	}
	if d := p.take(t0.Add(40 * time.Millisecond)); d != 60*time.Millisecond {
		t.Errorf("take 40ms later = %v, want 60ms", d)
	}
	if d := p.take(t0.Add(100 * time.Millisecond)); d != 0 {
		t.Errorf("take 100ms later = %v, want 0", d)
	}
	if d := p.take(t0.Add(time.Hour)); d != 0 || p.lim.TokensAt(t0.Add(time.Hour)) != 2 {
		t.Errorf("take an hour later = %v with %v tokens left, want 0 and 2 (capped at the burst)", d, p.lim.TokensAt(t0.Add(time.Hour)))
	}
}
