package guest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"

	"gpupass/internal/log"
)

// Change sources a Watcher reports.
const (
	ChangeDev     = "dev"     // a node created, removed, renamed or re-moded in /dev or /dev/nvidia-caps
	ChangeMounts  = "mounts"  // the container's mount table changed
	ChangeNetwork = "network" // a link, address or route changed
)

const devWatchMask = unix.IN_CREATE | unix.IN_DELETE | unix.IN_ATTRIB | unix.IN_MOVED_FROM |
	unix.IN_MOVED_TO | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

const netlinkGroups = unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR |
	unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_ROUTE

// Watcher reports every change that can alter a report, from one goroutine and one epoll
// set: device nodes in /dev and /dev/nvidia-caps (inotify), the mount table
// (/proc/self/mountinfo), network links, addresses and routes (a netlink subscription).
// It reports that something changed, not what: the agent re-checks everything.
type Watcher struct {
	paths  Paths
	log    *log.Entry
	epfd   int
	ino    int
	devWd  int
	capsWd int
	nl     int // -1 when netlink is unavailable
	mounts int // -1 when the mount table cannot be watched
	wake   int // eventfd that ends Run
}

// NewWatcher sets up the watches. Each is best effort (logged when unavailable): without
// one, the heartbeat still catches what it would have seen. Close releases it.
func NewWatcher(p Paths, l *log.Entry) (_ *Watcher, err error) {
	if l == nil {
		l = log.Discard()
	}
	w := &Watcher{paths: p.withDefaults(), log: l, epfd: -1, ino: -1, devWd: -1, capsWd: -1, nl: -1, mounts: -1, wake: -1}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	if w.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("create epoll: %w", err)
	}
	if w.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("create eventfd: %w", err)
	}
	// Device watches are best effort too: inotify instances are limited per user
	// (fs.inotify.max_user_instances, 128 by default, shared by every privileged
	// container's root), and an agent that cannot watch still reports at each heartbeat.
	dev := w.paths.host(w.paths.Dev)
	if w.ino, err = unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK); err != nil {
		w.log.WithError(err).Warn("device changes are not watched (raise fs.inotify.max_user_instances on the host): reports catch them at the heartbeat")
		w.ino = -1
	} else if w.devWd, err = unix.InotifyAddWatch(w.ino, dev, devWatchMask); err != nil {
		w.log.WithError(err).WithField("path", dev).Warn("device changes are not watched: reports catch them at the heartbeat")
		unix.Close(w.ino)
		w.ino = -1
	}
	err = nil
	w.watchCaps()
	if w.nl, err = subscribeNetlink(); err != nil {
		w.log.WithError(err).Warn("network changes are not watched: reports catch them at the heartbeat")
		w.nl = -1
	}
	mi := w.paths.host(w.paths.Proc + "/self/mountinfo")
	if w.mounts, err = unix.Open(mi, unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		w.log.WithError(err).WithField("path", mi).Debug("mount changes are not watched")
		w.mounts = -1
	}
	for _, fd := range []struct {
		fd     int
		events uint32
	}{{w.wake, unix.EPOLLIN}, {w.ino, unix.EPOLLIN}, {w.nl, unix.EPOLLIN}, {w.mounts, unix.EPOLLPRI}} {
		if fd.fd < 0 {
			continue
		}
		ev := unix.EpollEvent{Events: fd.events, Fd: int32(fd.fd)}
		if err = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, fd.fd, &ev); err != nil {
			return nil, fmt.Errorf("add fd to epoll: %w", err)
		}
	}
	return w, nil
}

// watchCaps adds the watch on /dev/nvidia-caps when it exists (it may appear later).
func (w *Watcher) watchCaps() {
	if w.capsWd >= 0 || w.ino < 0 {
		return
	}
	caps := filepath.Join(w.paths.host(w.paths.Dev), "nvidia-caps")
	if wd, err := unix.InotifyAddWatch(w.ino, caps, devWatchMask); err == nil {
		w.capsWd = wd
	}
}

func subscribeNetlink() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return -1, fmt.Errorf("open netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: netlinkGroups}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("subscribe to link, address and route changes: %w", err)
	}
	return fd, nil
}

// Run calls changed (from this goroutine) for every batch of changes until ctx ends.
// changed must not block for long.
func (w *Watcher) Run(ctx context.Context, changed func(source string)) error {
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(woken)
		one := [8]byte{1}
		unix.Write(w.wake, one[:])
	})
	defer func() {
		if !stop() {
			<-woken
		}
	}()
	events := make([]unix.EpollEvent, 8)
	buf := make([]byte, 8<<10) // events are only counted; a longer netlink message is truncated
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for changes: %w", err)
		}
		for _, ev := range events[:n] {
			switch int(ev.Fd) {
			case w.wake:
				return ctx.Err()
			case w.ino:
				if w.drainInotify(buf) {
					changed(ChangeDev)
				}
			case w.nl:
				if drain(w.nl, buf) {
					changed(ChangeNetwork)
				}
			case w.mounts:
				changed(ChangeMounts)
			}
		}
	}
}

// drainInotify reads every pending event, follows /dev/nvidia-caps coming and going, and
// reports whether anything happened.
func (w *Watcher) drainInotify(buf []byte) bool {
	got := false
	for {
		n, err := unix.Read(w.ino, buf)
		if n <= 0 || err != nil {
			return got
		}
		got = true
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameLen := int(ev.Len)
			if off+unix.SizeofInotifyEvent+nameLen > n {
				break
			}
			name := cString(buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+nameLen])
			switch {
			case int(ev.Wd) == w.devWd && name == "nvidia-caps" && ev.Mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0:
				w.watchCaps()
			case int(ev.Wd) == w.capsWd && ev.Mask&unix.IN_IGNORED != 0:
				w.capsWd = -1
			}
			off += unix.SizeofInotifyEvent + nameLen
		}
	}
}

func cString(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}

// drain reads fd until it would block; true when anything (or an overflow) was pending.
func drain(fd int, buf []byte) bool {
	got := false
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.ENOBUFS) {
			got = true // the kernel dropped messages: something changed
			continue
		}
		if n <= 0 || err != nil {
			return got
		}
		got = true
	}
}

// WatchesNetwork says whether network changes are reported (the netlink subscription is
// up): when they are, a network check stays valid until the next ChangeNetwork.
// WatchesDevices reports whether device node changes are watched (inotify available).
func (w *Watcher) WatchesDevices() bool { return w.ino >= 0 }

func (w *Watcher) WatchesNetwork() bool { return w.nl >= 0 }

// Close releases the watches. Run must have returned.
func (w *Watcher) Close() error {
	for _, fd := range []*int{&w.mounts, &w.nl, &w.ino, &w.wake, &w.epfd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	return nil
}
