package guest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"gpupass/internal/runner"
	pb "gpupass/proto/gpupass/v1"
)

const smiH100 = "0, GPU-4c3f2a7e-9b1d-4a58-8e1c-2f0d9a6b7c31, NVIDIA H100 80GB HBM3, 81559, 580.159.04\n"

func TestParseSmiCSV(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []*pb.SmiGPU
		err  error
	}{
		{name: "one H100", in: smiH100, want: []*pb.SmiGPU{{Index: 0, Uuid: "GPU-4c3f2a7e-9b1d-4a58-8e1c-2f0d9a6b7c31", Name: "NVIDIA H100 80GB HBM3", MemoryTotalMib: 81559, DriverVersion: "580.159.04"}}},
		{name: "two GPUs, CRLF and blank lines", in: "0, GPU-a, Tesla T4, 15360, 535.104.05\r\n\n1, GPU-b, Tesla T4, 15360, 535.104.05\r\n", want: []*pb.SmiGPU{
			{Index: 0, Uuid: "GPU-a", Name: "Tesla T4", MemoryTotalMib: 15360, DriverVersion: "535.104.05"},
			{Index: 1, Uuid: "GPU-b", Name: "Tesla T4", MemoryTotalMib: 15360, DriverVersion: "535.104.05"},
		}},
		{name: "memory with units", in: "3, GPU-c, A100, 40960 MiB, 550.54.14\n", want: []*pb.SmiGPU{{Index: 3, Uuid: "GPU-c", Name: "A100", MemoryTotalMib: 40960, DriverVersion: "550.54.14"}}},
		{name: "memory not available", in: "0, MIG-d, H100 MIG 1g.10gb, [N/A], 580.159.04\n", want: []*pb.SmiGPU{{Index: 0, Uuid: "MIG-d", Name: "H100 MIG 1g.10gb", DriverVersion: "580.159.04"}}},
		{name: "name with commas", in: "0, GPU-e, Weird, Name, Inc, 1024, 1.2.3\n", want: []*pb.SmiGPU{{Index: 0, Uuid: "GPU-e", Name: "Weird, Name, Inc", MemoryTotalMib: 1024, DriverVersion: "1.2.3"}}},
		{name: "empty", in: "", want: nil},
		{name: "NVML failure text", in: "Failed to initialize NVML: Driver/library version mismatch\n", err: ErrSmiFormat},
		{name: "bad index", in: "x, GPU-a, T4, 1, 1.2\n", err: ErrSmiFormat},
		{name: "bad uuid", in: "0, 1234, T4, 1, 1.2\n", err: ErrSmiFormat},
		{name: "bad memory", in: "0, GPU-a, T4, lots, 1.2\n", err: ErrSmiFormat},
		{name: "too many GPUs", in: strings.Repeat("0, GPU-a, T4, 1, 1.2\n", maxSmiGPUs+1), err: ErrSmiFormat},
		{name: "field too long", in: "0, GPU-" + strings.Repeat("a", maxSmiField) + ", T4, 1, 1.2\n", err: ErrSmiFormat},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseSmiCSV([]byte(tc.in))
			if !errors.Is(err, tc.err) {
				t.Fatalf("ParseSmiCSV error = %v, want %v", err, tc.err)
			}
			if diff := cmp.Diff(got, tc.want, protocmp.Transform()); diff != "" {
				t.Errorf("ParseSmiCSV (-got +want):\n%s", diff)
			}
		})
	}
}

func FuzzParseSmiCSV(f *testing.F) {
	f.Add([]byte(smiH100))
	f.Add([]byte("0, GPU-a, Tesla T4, 15360, 535.104.05\r\n1, GPU-b, T4, [N/A], 1.2\n"))
	f.Add([]byte("Failed to initialize NVML: Unknown Error\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		gpus, err := ParseSmiCSV(b)
		if err != nil {
			return
		}
		if len(gpus) > maxSmiGPUs {
			t.Fatalf("%d GPUs, more than the cap", len(gpus))
		}
		for _, g := range gpus {
			if !strings.HasPrefix(g.Uuid, "GPU-") && !strings.HasPrefix(g.Uuid, "MIG-") {
				t.Fatalf("uuid %q accepted", g.Uuid)
			}
		}
	})
}

func TestRunSmi(t *testing.T) {
	key := "/usr/bin/nvidia-smi " + strings.Join(SmiArgs, " ")
	tests := []struct {
		name string
		resp runner.Response
		want *pb.SmiResult
	}{
		{name: "ok", resp: runner.Response{Stdout: smiH100}, want: &pb.SmiResult{Ran: true, Gpus: []*pb.SmiGPU{
			{Uuid: "GPU-4c3f2a7e-9b1d-4a58-8e1c-2f0d9a6b7c31", Name: "NVIDIA H100 80GB HBM3", MemoryTotalMib: 81559, DriverVersion: "580.159.04"}}}},
		{name: "version mismatch", resp: runner.Response{Stdout: "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 580.126\n", ExitCode: 18},
			want: &pb.SmiResult{Ran: true, Error: "exit 18: Failed to initialize NVML: Driver/library version mismatch"}},
		{name: "error on stderr", resp: runner.Response{Stderr: "boom\n", ExitCode: 9}, want: &pb.SmiResult{Ran: true, Error: "exit 9: boom"}},
		{name: "unparsable", resp: runner.Response{Stdout: "what\n"}, want: &pb.SmiResult{Ran: true, Error: `line 1: "what": want 5 fields: unexpected nvidia-smi output`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &runner.Fake{Responses: map[string][]runner.Response{key: {tc.resp}}}
			got := RunSmi(context.Background(), f, "/usr/bin/nvidia-smi", time.Second)
			got.DurationMs = 0
			if diff := cmp.Diff(got, tc.want, protocmp.Transform()); diff != "" {
				t.Errorf("RunSmi (-got +want):\n%s", diff)
			}
			if diff := cmp.Diff(f.Transcript(), []string{key}); diff != "" {
				t.Errorf("transcript (-got +want):\n%s", diff)
			}
		})
	}
}

func TestRunSmiTimeout(t *testing.T) {
	script := filepath.Join(t.TempDir(), "nvidia-smi")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexec sleep 10\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	got := RunSmi(context.Background(), runner.Exec{}, script, 100*time.Millisecond)
	if !got.Ran || !strings.HasPrefix(got.Error, "timed out") {
		t.Errorf("RunSmi(hanging nvidia-smi) = %v; want a time-out", got)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("RunSmi took %v with a 100ms timeout", d)
	}
}
