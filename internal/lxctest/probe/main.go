//go:build linux

// Command probe is a tiny static program that lxctest puts into test containers to look at
// them from inside: open device nodes and name the errno, stat nodes, and talk to a unix
// socket. It uses no net package, so that it builds fast with CGO_ENABLED=0.
//
//	probe open PATH...        one line per path: "PATH ok" or "PATH EPERM"; exit 1 unless all ok
//	probe stat PATH...        one line per path: "PATH char 195:0", "PATH file", "PATH missing"
//	probe dial SOCKET MSG     connect, send MSG, print what comes back until EOF
package main

import (
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: probe open|stat PATH... | probe dial SOCKET MSG")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "open":
		os.Exit(openAll(os.Args[2:]))
	case "stat":
		os.Exit(statAll(os.Args[2:]))
	case "dial":
		if len(os.Args) != 4 {
			fmt.Fprintln(os.Stderr, "usage: probe dial SOCKET MSG")
			os.Exit(2)
		}
		if err := dial(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "probe:", err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "probe: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func errnoName(err error) string {
	if e, ok := err.(unix.Errno); ok {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
	}
	return strings.ReplaceAll(err.Error(), " ", "_")
}

func openAll(paths []string) int {
	code := 0
	for _, p := range paths {
		fd, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			fmt.Printf("%s %s\n", p, errnoName(err))
			code = 1
			continue
		}
		unix.Close(fd)
		fmt.Printf("%s ok\n", p)
	}
	return code
}

func statAll(paths []string) int {
	code := 0
	for _, p := range paths {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			if err == unix.ENOENT {
				fmt.Printf("%s missing\n", p)
			} else {
				fmt.Printf("%s %s\n", p, errnoName(err))
			}
			code = 1
			continue
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
			fmt.Printf("%s char %d:%d\n", p, unix.Major(st.Rdev), unix.Minor(st.Rdev))
		case unix.S_IFREG:
			fmt.Printf("%s file\n", p)
		case unix.S_IFDIR:
			fmt.Printf("%s dir\n", p)
		default:
			fmt.Printf("%s other\n", p)
		}
	}
	return code
}

func dial(path, msg string) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return fmt.Errorf("connect %s: %s", path, errnoName(err))
	}
	if _, err := unix.Write(fd, []byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if n > 0 {
			os.Stdout.Write(buf[:n])
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if n == 0 {
			return nil
		}
	}
}
