package guest

import (
	"net"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	pb "gpupass/proto/gpupass/v1"
)

// CheckNetwork reports the container's network through netlink: ok when a non-loopback
// link is up with a global address and there is a default route (IPv4 or IPv6). Links are
// sorted by name.
func CheckNetwork() *pb.Network {
	n := &pb.Network{}
	links, err := netlink.LinkList()
	if err != nil {
		n.Reason = truncate("list links: "+err.Error(), maxDetail)
		return n
	}
	// One dump of every address (AddrList per link dumps them all each time).
	byLink := map[int][]netlink.Addr{}
	if addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL); err == nil {
		for _, ad := range addrs {
			byLink[ad.LinkIndex] = append(byLink[ad.LinkIndex], ad)
		}
	}
	upWithAddr := false
	anyUp := false
	for _, l := range links {
		a := l.Attrs()
		if a.Flags&net.FlagLoopback != 0 || a.EncapType == "loopback" {
			continue
		}
		nl := &pb.NetLink{Name: truncate(a.Name, 64), Up: a.Flags&net.FlagUp != 0 && a.OperState != netlink.OperDown && a.OperState != netlink.OperLowerLayerDown}
		if nl.Up {
			anyUp = true
		}
		for _, ad := range byLink[a.Index] {
			if ad.IP == nil || !ad.IP.IsGlobalUnicast() {
				continue
			}
			if len(nl.Addresses) < MaxAddresses {
				nl.Addresses = append(nl.Addresses, ad.IPNet.String())
			}
			if nl.Up {
				upWithAddr = true
			}
		}
		if len(n.Links) < MaxLinks {
			n.Links = append(n.Links, nl)
		}
	}
	slices.SortFunc(n.Links, func(a, b *pb.NetLink) int { return strings.Compare(a.Name, b.Name) })
	routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err == nil {
		for _, r := range routes {
			if r.Dst == nil || (r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) {
				n.DefaultRoute = true
				break
			}
		}
	}
	switch {
	case !anyUp:
		n.Reason = "no network link up"
	case !upWithAddr:
		n.Reason = "no address on an up network link"
	case err != nil:
		n.Reason = truncate("list routes: "+err.Error(), maxDetail)
	case !n.DefaultRoute:
		n.Reason = "no default route"
	default:
		n.Ok = true
	}
	return n
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}
