package guestchan

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// maxSocketPath is the longest unix socket path the kernel takes (sun_path less the NUL).
const maxSocketPath = 107

// Ensure makes <Dir>/<id> (0755), listens on <Dir>/<id>/agent.sock (0666: who may talk is
// decided by the identity check, not file modes) and, while Run is active, serves it. A
// socket file left by an earlier agent is removed first; any other file there, or a live
// listener of another process, is an error. It is idempotent and returns the directory
// to bind-mount into the container at GuestDir.
func (r *Registry) Ensure(id string) (hostDir string, err error) {
	if err := ValidateID(id); err != nil {
		return "", fmt.Errorf("ensure guest socket: %w", err)
	}
	if r.cfg.Dir == "" {
		return "", errors.New("ensure guest socket: no socket directory configured (guest_socket_dir)")
	}
	dir := filepath.Join(r.cfg.Dir, id)
	sock := filepath.Join(dir, SocketName)
	if len(sock) > maxSocketPath {
		return "", fmt.Errorf("ensure guest socket %s: the path is %d bytes, unix sockets take at most %d: shorten guest_socket_dir", sock, len(sock), maxSocketPath)
	}
	r.ensureMu.Lock()
	defer r.ensureMu.Unlock()
	r.mu.Lock()
	if c := r.containers[id]; c != nil && c.ln != nil {
		r.mu.Unlock()
		return dir, nil
	}
	r.mu.Unlock()

	if err := makeDir(r.cfg.Dir, false); err != nil {
		return "", err
	}
	if err := makeDir(dir, true); err != nil {
		return "", err
	}
	if err := clearStaleSocket(sock); err != nil {
		return "", err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return "", fmt.Errorf("listen on guest socket: %w", err)
	}
	if err := os.Chmod(sock, 0o666); err != nil {
		ln.Close()
		return "", fmt.Errorf("ensure guest socket: %w", err)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.lookupOrAdd(id)
	c.dir, c.ln = dir, ln
	if r.runCtx != nil {
		r.serveLocked(c)
	}
	r.log.WithField("container", id).WithField("socket", sock).Debug("guest socket listening")
	return dir, nil
}

// makeDir makes dir (0755) unless it is there; a symlink or a non-directory is an error.
// exact also resets the mode (the container must be able to traverse it).
func makeDir(dir string, exact bool) error {
	fi, err := os.Lstat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("make guest socket directory: %w", err)
		}
	case err != nil:
		return fmt.Errorf("check guest socket directory: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("guest socket directory %s is a %s, not a directory: remove it", dir, fi.Mode().Type())
	}
	if exact {
		if err := os.Chmod(dir, 0o755); err != nil {
			return fmt.Errorf("make guest socket directory: %w", err)
		}
	}
	return nil
}

// clearStaleSocket removes a socket file nobody listens on.
func clearStaleSocket(sock string) error {
	fi, err := os.Lstat(sock)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("check guest socket: %w", err)
	case fi.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("guest socket path %s holds a %s, not a socket: remove it", sock, fileKind(fi))
	}
	if conn, err := net.DialTimeout("unix", sock, 200*time.Millisecond); err == nil {
		conn.Close()
		return fmt.Errorf("guest socket %s is served by another process (a second host agent?): stop it first", sock)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale guest socket: %w", err)
	}
	return nil
}

func fileKind(fi fs.FileInfo) string {
	switch t := fi.Mode().Type(); {
	case t == 0:
		return "regular file"
	case t&fs.ModeDir != 0:
		return "directory"
	case t&fs.ModeSymlink != 0:
		return "symlink"
	default:
		return t.String()
	}
}

// acceptLoop accepts connections on ln until ctx ends or ln is closed. done counts the
// connections' goroutines (Remove waits for them).
func (r *Registry) acceptLoop(ctx context.Context, c *container, ln *net.UnixListener, done *sync.WaitGroup) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	backoff := 5 * time.Millisecond
	for {
		conn, err := ln.AcceptUnix()
		accepted := time.Now() // the wall clock: compared with a peer's start time
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off, do not spin.
			r.logOnce(c.id, "accept", func() { r.log.WithField("container", c.id).WithError(err).Warn("accept on guest socket failed") })
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		if !r.admit(c) {
			conn.Close()
			r.logOnce(c.id, "conns", func() {
				r.log.WithField("container", c.id).WithField("limit", maxHandshakes).Warn("too many handshakes on guest socket: closing new connections")
			})
			continue
		}
		r.wg.Add(1)
		done.Add(1)
		go func() {
			defer r.wg.Done()
			defer done.Done()
			r.handleConn(ctx, c, conn, accepted)
		}()
	}
}

// maxHandshakes bounds the connections per container that are still in their Hello
// (each lasts at most HelloTimeout); established sessions are bounded apart, by
// MaxSessionsPerContainer, and refused with a reason.
const maxHandshakes = 16

func (r *Registry) admit(c *container) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.handshakes >= maxHandshakes {
		return false
	}
	c.handshakes++
	return true
}

// logOnce runs logf unless a line of this kind for this container was logged lately.
func (r *Registry) logOnce(id, kind string, logf func()) {
	if r.limiter.Allow(kind + "/" + id) {
		logf()
	}
}
