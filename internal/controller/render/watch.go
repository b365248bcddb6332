package render

import (
	"fmt"
	"io"
	"strings"
	"time"

	"gpupass/internal/controller"
)

// WatchLine writes one readiness change as a line.
func WatchLine(w io.Writer, ev controller.Event, s Style) {
	ct := ev.Container
	line := fmt.Sprintf("%s  %s  %s", ev.Time.UTC().Format(time.RFC3339), name(ct), s.paint(StateColor(ct.State), ct.State))
	if len(ct.Reasons) > 0 {
		line += "  " + strings.Join(ct.Reasons, "; ")
	}
	if ct.RestartRequired && ct.State != controller.StateUnreachable {
		line += "  (restart required)"
	}
	fmt.Fprintln(w, line)
}

// watchJSON is one JSON line of status --watch -o json: the container as in the report,
// with the time of the change.
type watchJSON struct {
	Time string `json:"time"`
	controller.Container
}

// WatchJSON writes one readiness change as a JSON line.
func WatchJSON(w io.Writer, ev controller.Event) error {
	b, err := jsonLine(watchJSON{Time: ev.Time.UTC().Format(time.RFC3339Nano), Container: ev.Container})
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
