package render

import (
	"gpupass/internal/controller"
	pb "gpupass/proto/gpupass/v1"
)

// reasonTexts are ct's reasons as the tables, plan's text and watch lines show them:
// reasons that differ only in their device are one naming the devices (pb.GroupByDevice),
// in the order the guest checked them, so four nodes a device cgroup denies give one hint,
// not the same hint four times. The JSON keeps every reason (reasons_detail).
func reasonTexts(ct controller.Container) []string {
	var rs []*pb.Reason
	for _, d := range ct.ReasonsDetail() {
		k, ok := pb.ReasonKindOf(d.Kind)
		if !ok {
			rs = append(rs, pb.OtherReason(d.Text)) // the controller's own: as it is
			continue
		}
		rs = append(rs, &pb.Reason{Kind: k, Text: d.Text, Device: d.Device, Want: d.Want, Got: d.Got, Detail: d.Detail})
	}
	checked := map[string]int{}
	for i, d := range ct.Devices {
		checked[d.Path] = i + 1
	}
	byCheck := func(a, b string) int {
		ia, ib := checked[a], checked[b]
		switch {
		case ia == 0 && ib == 0:
			return 0
		case ia == 0:
			return 1
		case ib == 0:
			return -1
		}
		return ia - ib
	}
	return pb.ReasonTexts(pb.GroupByDevice(rs, byCheck))
}
