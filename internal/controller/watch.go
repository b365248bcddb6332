package controller

import (
	"context"
	"errors"
	"io"
	"slices"
	"sync"
	"time"

	"gpupass/internal/fleet"
	pb "gpupass/proto/gpupass/v1"
)

// Event is a change in a container's readiness seen by Watch.
type Event struct {
	Time      time.Time
	Container Container
}

// Watch streams readiness changes of the fleet's containers from all hosts until ctx
// ends: first the current state of each, then every change. A host that cannot be reached
// or drops the stream makes its containers unreachable (one event each) and is retried
// with capped exponential backoff. fn is called from one goroutine at a time.
func (c *Controller) Watch(ctx context.Context, fn func(Event)) error {
	var mu sync.Mutex
	last := map[string]string{}
	emit := func(ct Container) {
		sig := ct.State + "\x00" + ct.Error + "\x00" + joinReasons(ct.Reasons) + "\x00" + boolStr(ct.RestartRequired)
		mu.Lock()
		defer mu.Unlock()
		if last[ct.Key()] == sig {
			return
		}
		last[ct.Key()] = sig
		fn(Event{Time: time.Now(), Container: ct})
	}
	byHost := c.opts.Fleet.ByHost()
	var wg sync.WaitGroup
	for _, h := range c.opts.Fleet.Hosts {
		entries := byHost[h.Name]
		if len(entries) == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.watchHost(ctx, h, entries, emit)
		}()
	}
	wg.Wait()
	return nil
}

func joinReasons(r []string) string {
	out := ""
	for _, s := range r {
		out += s + "\n"
	}
	return out
}

func boolStr(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

const (
	watchBackoffMin = 500 * time.Millisecond
	watchBackoffMax = 30 * time.Second
)

func (c *Controller) watchHost(ctx context.Context, h fleet.Host, entries []fleet.Container, emit func(Container)) {
	backoff := watchBackoffMin
	for ctx.Err() == nil {
		ok, err := c.watchOnce(ctx, h, entries, emit)
		if ctx.Err() != nil {
			return
		}
		if ok {
			backoff = watchBackoffMin
		}
		w := &hostWork{host: h, entries: entries, report: &Host{}}
		for _, e := range entries {
			ct := newContainer(e)
			w.out = append(w.out, &ct)
		}
		w.fail(err, c.opts.Timeout)
		for _, ct := range w.out {
			emit(*ct)
		}
		c.log.WithField("host", h.Name).WithError(err).Debug("watch: host lost, retrying")
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, watchBackoffMax)
	}
}

// watchOnce follows one session to h until it fails; ok reports that it got that far.
func (c *Controller) watchOnce(ctx context.Context, h fleet.Host, entries []fleet.Container, emit func(Container)) (ok bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cctx, ccancel := context.WithTimeout(ctx, c.opts.Timeout)
	s, err := c.connectWithin(sctx, cctx, h)
	ccancel()
	if err != nil {
		return false, err
	}
	defer s.close()
	w := &hostWork{host: h, entries: entries, report: &Host{}}
	for _, e := range entries {
		ct := newContainer(e)
		w.out = append(w.out, &ct)
	}
	// The current state first, so that every container shows up at once.
	callCtx, callCancel := context.WithTimeout(sctx, c.opts.Timeout)
	err = c.status(callCtx, s, w)
	callCancel()
	if err != nil {
		return false, &stageError{"waiting for the answer of", h.Address, err}
	}
	for _, ct := range w.out {
		emit(*ct)
	}
	st, err := s.Open(sctx, MethodWatch)
	if err != nil {
		return true, err
	}
	defer st.Close()
	ids := make([]string, len(entries))
	for i, e := range entries {
		ids[i] = e.ID
	}
	// The fleet's specs, as the Status call above sent them: the agent judges its events
	// against them, so that they agree with that first state (an older agent ignores them
	// and judges against the spec it last applied).
	if err := st.Send(&pb.WatchRequest{ContainerIds: ids, Containers: specs(entries)}); err != nil {
		return true, err
	}
	for {
		var ev pb.WatchEvent
		if err := st.RecvReply(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the host agent ended the watch")
			}
			return true, err
		}
		id := ev.GetStatus().GetId()
		i := slices.IndexFunc(entries, func(e fleet.Container) bool { return e.ID == id })
		if i < 0 {
			continue
		}
		ct := newContainer(entries[i])
		ct.Simulated = w.report.Simulated
		applyStatus(&ct, ev.GetStatus())
		markGPUsDiffer(&ct, true)
		emit(ct)
	}
}
