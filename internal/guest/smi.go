package guest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gpupass/internal/runner"
	pb "gpupass/proto/gpupass/v1"
)

// SmiArgs are the arguments of the deep check.
var SmiArgs = []string{"--query-gpu=index,uuid,name,memory.total,driver_version", "--format=csv,noheader,nounits"}

// DefaultSmiTimeout bounds one nvidia-smi run (its first NVML init can take seconds).
const DefaultSmiTimeout = 15 * time.Second

// Bounds on what nvidia-smi output may hold.
const (
	maxSmiGPUs   = 64
	maxSmiOutput = 256 << 10
	maxSmiField  = 256
)

// ErrSmiFormat means nvidia-smi printed something that is not the expected CSV.
var ErrSmiFormat = errors.New("unexpected nvidia-smi output")

// ParseSmiCSV parses the output of `nvidia-smi --query-gpu=index,uuid,name,memory.total,
// driver_version --format=csv,noheader,nounits`: one line per GPU, fields separated by ", ".
// "[N/A]" memory reads as 0. A GPU name holding commas is kept whole (the fields around it
// are fixed).
func ParseSmiCSV(b []byte) ([]*pb.SmiGPU, error) {
	if len(b) > maxSmiOutput {
		return nil, fmt.Errorf("%d bytes: %w", len(b), ErrSmiFormat)
	}
	var gpus []*pb.SmiGPU
	for n, line := range bytes.Split(b, []byte("\n")) {
		s := strings.TrimSpace(string(bytes.TrimSuffix(line, []byte("\r"))))
		if s == "" {
			continue
		}
		if len(gpus) == maxSmiGPUs {
			return nil, fmt.Errorf("more than %d GPUs: %w", maxSmiGPUs, ErrSmiFormat)
		}
		f := strings.Split(s, ",")
		if len(f) < 5 {
			return nil, fmt.Errorf("line %d: %q: want 5 fields: %w", n+1, truncate(s, 80), ErrSmiFormat)
		}
		// index, uuid, name (may hold commas), memory.total, driver_version
		name := strings.Join(f[2:len(f)-2], ",")
		f = []string{f[0], f[1], name, f[len(f)-2], f[len(f)-1]}
		for i := range f {
			f[i] = strings.TrimSpace(f[i])
			if len(f[i]) > maxSmiField {
				return nil, fmt.Errorf("line %d: field %d longer than %d bytes: %w", n+1, i+1, maxSmiField, ErrSmiFormat)
			}
		}
		idx, err := strconv.ParseUint(f[0], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("line %d: index %q: %w", n+1, truncate(f[0], 40), ErrSmiFormat)
		}
		if !strings.HasPrefix(f[1], "GPU-") && !strings.HasPrefix(f[1], "MIG-") {
			return nil, fmt.Errorf("line %d: uuid %q: %w", n+1, truncate(f[1], 80), ErrSmiFormat)
		}
		var mem uint64
		if f[3] != "[N/A]" && f[3] != "N/A" {
			if mem, err = strconv.ParseUint(strings.TrimSuffix(f[3], " MiB"), 10, 64); err != nil {
				return nil, fmt.Errorf("line %d: memory.total %q: %w", n+1, truncate(f[3], 40), ErrSmiFormat)
			}
		}
		gpus = append(gpus, &pb.SmiGPU{Index: uint32(idx), Uuid: f[1], Name: f[2], MemoryTotalMib: mem, DriverVersion: f[4]})
	}
	return gpus, nil
}

// FindSmi returns the in-container path of nvidia-smi: the first one on PathEnv, then in
// BinDirs; ok is false when there is none.
func (p Paths) FindSmi() (string, bool) {
	p = p.withDefaults()
	dirs := append(filepath.SplitList(p.PathEnv), p.BinDirs...)
	for _, d := range dirs {
		if d == "" || !filepath.IsAbs(d) {
			continue
		}
		path := filepath.Join(d, "nvidia-smi")
		fi, err := os.Stat(p.host(path))
		if err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return path, true
		}
	}
	return "", false
}

// RunSmi runs nvidia-smi at path (a path on this machine) under timeout and parses its
// output. The result says why when it could not.
func RunSmi(ctx context.Context, r runner.Runner, path string, timeout time.Duration) *pb.SmiResult {
	if timeout <= 0 {
		timeout = DefaultSmiTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	out, err := r.Run(ctx, append([]string{path}, SmiArgs...)...)
	res := &pb.SmiResult{Ran: true, DurationMs: time.Since(start).Milliseconds()}
	if err != nil {
		res.Error = smiError(out, err)
		return res
	}
	gpus, err := ParseSmiCSV(out)
	if err != nil {
		res.Error = truncate(err.Error(), maxDetail)
		return res
	}
	res.Gpus = gpus
	return res
}

// smiError names why nvidia-smi failed: it prints NVML errors ("Failed to initialize NVML:
// Driver/library version mismatch") on standard output.
func smiError(out []byte, err error) string {
	msg := err.Error()
	var ee *runner.ExitError
	if errors.As(err, &ee) {
		msg = fmt.Sprintf("exit %d", ee.ExitCode)
		if errors.Is(err, context.DeadlineExceeded) {
			msg = "timed out"
		}
		text := strings.TrimSpace(string(out))
		if text == "" {
			text = strings.TrimSpace(ee.Stderr)
		}
		if text != "" {
			msg += ": " + firstLine(text)
		}
	} else if errors.Is(err, fs.ErrNotExist) {
		msg = "not found"
	}
	return truncate(msg, maxDetail)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
