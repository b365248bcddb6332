// Package observe reads what a running container really has, from the host and without
// exec: its device nodes through /proc/<pid>/root and its mounts through
// /proc/<pid>/mountinfo. This, not the config text, is the evidence the restart rule uses:
// a config line added after the start is in the file but not in the container.
package observe
