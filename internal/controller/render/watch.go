package render

import (
	"encoding/json"
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
		line += "  " + strings.Join(reasonTexts(ct), "; ")
	}
	if ct.RestartRequired && ct.State != controller.StateUnreachable {
		line += "  (restart required)"
	}
	fmt.Fprintln(w, line)
}

// WatchJSON writes one readiness change as a JSON line of status --watch -o json: the
// container as in the report (its own JSON, reasons_detail included), with the time of
// the change first.
func WatchJSON(w io.Writer, ev controller.Event) error {
	b, err := jsonLine(ev.Container)
	if err != nil {
		return err
	}
	t, err := json.Marshal(ev.Time.UTC().Format(time.RFC3339Nano))
	if err != nil {
		return err
	}
	line := append([]byte(`{"time":`), t...)
	if len(b) > 2 && b[1] != '}' {
		line = append(line, ',')
	}
	_, err = w.Write(append(line, b[1:]...))
	return err
}
