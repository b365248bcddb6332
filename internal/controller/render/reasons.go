package render

import (
	"slices"
	"strings"

	"gpupass/internal/controller"
	pb "gpupass/proto/gpupass/v1"
)

// reasonTexts are ct's reasons as the tables, plan's text and watch lines show them:
// device checks that fail alike (the same status and detail) are one entry naming their
// devices in the order the guest checked them, so four nodes a device cgroup denies give
// one hint, not the same hint four times. The JSON keeps every reason (reasons_detail).
func reasonTexts(ct controller.Container) []string {
	details := ct.ReasonsDetail()
	checked := map[string]int{}
	for i, d := range ct.Devices {
		checked[d.Path] = i
	}
	deviceCheck := pb.ReasonKindName(pb.ReasonKind_REASON_KIND_DEVICE_CHECK)
	type group struct {
		at      int // index in out
		devices []string
		got     string
		detail  string
	}
	var out []string
	groups := map[string]*group{}
	var order []*group
	for _, d := range details {
		if d.Kind != deviceCheck || d.Device == "" || d.Text != d.Device+": "+d.Got+": "+d.Detail {
			out = append(out, d.Text)
			continue
		}
		key := d.Got + "\x00" + d.Detail
		g, ok := groups[key]
		if !ok {
			g = &group{at: len(out), got: d.Got, detail: d.Detail}
			groups[key] = g
			order = append(order, g)
			out = append(out, d.Text)
		}
		g.devices = append(g.devices, d.Device)
	}
	for _, g := range order {
		if len(g.devices) < 2 {
			continue
		}
		slices.SortStableFunc(g.devices, func(a, b string) int {
			ia, oka := checked[a]
			ib, okb := checked[b]
			switch {
			case oka && okb:
				return ia - ib
			case oka:
				return -1
			case okb:
				return 1
			}
			return strings.Compare(a, b)
		})
		out[g.at] = strings.Join(g.devices, ", ") + ": " + g.got + ": " + g.detail
	}
	return out
}
