package guest

import (
	"runtime"
	"strings"
)

func testingArch() string { return runtime.GOARCH }

func contains(s, sub string) bool { return strings.Contains(s, sub) }
