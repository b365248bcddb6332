package controller

import (
	"encoding/json"

	pb "gpupass/proto/gpupass/v1"
)

// ReasonDetail is one reason as data in the JSON: `reasons_detail` lists one per entry of
// `reasons` (which stays a list of strings for older readers), in the same order. Kind is
// a stable CamelCase identifier: a host's or guest's reason kind (pb.ReasonKindName), or
// one of the controller's own below; a text nothing recorded as data is "Other".
type ReasonDetail = pb.ReasonJSON

// The controller's own reason kinds.
const (
	KindConfigDiffers      = "ConfigDiffers"      // want: how many managed lines change
	KindRestartRequired    = "RestartRequired"    // a restart the host gave no reason for
	KindStartWanted        = "StartWanted"        // stopped; the fleet asks for it to run
	KindLocked             = "Locked"             // detail: the lock
	KindPendingChanges     = "PendingChanges"     // detail: the pending changes
	KindPendingReplacesLXC = "PendingReplacesLxc" // a pending lxc.* line replaces all raw lxc.* lines
	KindHAManaged          = "HaManaged"          // detail: the HA resource
	KindPlanFailed         = "PlanFailed"         // detail: the host's error
	KindApplyFailed        = "ApplyFailed"        // detail: the host's error
	KindUnknownState       = "UnknownState"       // got: the state the host sent
	KindNotReported        = "NotReported"        // the host's answer does not mention the container
	KindHostFailed         = "HostFailed"         // the host could not be asked, or answered with an error
	KindUnknownContainer   = "UnknownContainer"   // the host does not know the container
)

// detailOf is a host's or guest's reason as JSON data.
func detailOf(r *pb.Reason) ReasonDetail { return pb.ReasonToJSON(r) }

// note records a reason's data under its text and returns the text (for c.Reasons).
func (c *Container) note(d ReasonDetail) string {
	if c.details == nil {
		c.details = map[string]ReasonDetail{}
	}
	c.details[d.Text] = d
	return d.Text
}

// AddReason adds a reason as text (Reasons) and as data (ReasonsDetail).
func (c *Container) AddReason(d ReasonDetail) { c.Reasons = append(c.Reasons, c.note(d)) }

// ReasonsDetail is c.Reasons as data, in the same order.
func (c Container) ReasonsDetail() []ReasonDetail {
	out := make([]ReasonDetail, 0, len(c.Reasons))
	for _, t := range c.Reasons {
		d, ok := c.details[t]
		if !ok {
			d = ReasonDetail{Kind: pb.ReasonKindName(pb.ReasonKind_REASON_KIND_OTHER), Text: t}
		}
		out = append(out, d)
	}
	return out
}

// MarshalJSON is the container's JSON with `reasons_detail` beside `reasons`.
func (c Container) MarshalJSON() ([]byte, error) {
	type plain Container
	return json.Marshal(struct {
		plain
		ReasonsDetail []ReasonDetail `json:"reasons_detail"`
	}{plain(c), c.ReasonsDetail()})
}
