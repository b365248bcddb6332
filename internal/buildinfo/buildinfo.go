// Package buildinfo holds the version stamped into every binary at link time.
package buildinfo

// Version is set with -ldflags "-X gpupass/internal/buildinfo.Version=...".
var Version = "dev"
