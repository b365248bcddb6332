package main

import (
	"testing"

	"gpupass/internal/lxctest"
)

func TestMain(m *testing.M) { lxctest.Cgroup2Main(m) }
