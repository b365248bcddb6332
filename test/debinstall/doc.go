// Package debinstall proves the Debian packages (make deb) under a real systemd: a Debian
// 12 LXC container booting systemd as PID 1 installs them with apt, and the host agent
// starts as Type=notify, answers the controller, restarts, and goes on remove and purge.
package debinstall
