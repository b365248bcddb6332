package e2e

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"gpupass/internal/lxctest"
	"gpupass/internal/testenv"
)

// scenario is one named end-to-end test.
type scenario struct {
	name string
	fn   func(t *testing.T, f *fabric)
}

// scenarios lists every scenario; docs/e2e.md maps each to what it proves.
var scenarios = []scenario{
	{"Row01_SeedLinesPresentContainerRunningWithout", testSeed},
	{"Row02_SnapshotSectionNeverEdited_PVE", testSnapshotSection},
	{"Row03_DuplicateConflictingRulesReplaced", testDuplicateRules},
	{"Row03_DuplicateConflictingRulesReplaced_PVE", testDuplicateRulesPVE},
	{"Row04_ShrinkRemovesGPU0_CloneGetsNone", testShrinkAndClone},
	{"Row04_ShrinkAndCloneConfig_PVE", testShrinkAndClonePVE},
	{"Row05_StaleUVMMajorCorrected", testStaleMajor},
	{"Row05_StaleMajorReplaced_PVE", testStaleMajorPVE},
	{"Row06_HostPrepCreatesUVMNodes", testHostPrepCreatesUVM},
	{"Row06_RequiredNodesNeverOptional_PVE", testRequiredNotOptionalPVE},
	{"Row07_VersionMismatchIsTheReason", testVersionMismatch},
	{"Row08_GPU1OnlyBecomesReady", testGPU1OnlyReady},
	{"Row09_NotReadyIsAHardFailure", testNotReadyHardFailure},
	{"Row10_IndexIsNotMinor", testIndexIsNotMinor},
	{"Row10_IndexIsNotMinor_PVE", testIndexNotMinorPVE},
	{"Row11_LockHeld", testLockHeld},
	{"Row11_LockHeld_PVE", testLockHeldPVE},
	{"Row12_PushNotPoll", testPushNotPoll},
	{"Row13_EveryNotReadyHasAReason", testEveryNotReadyHasReason},
	{"Isolation_GPU1OnlyCannotOpenGPU0", testIsolationGPU0Denied},
	{"Fleet_ThreeHostsApply", testFleet},
	{"Digest_ExternalEditBetweenPlanAndApply", testDigestMismatch},
	{"Crash_HostAgentKilledAtEachStep", testAgentKilledAtEachStep},
	{"Crash_ControllerKilledMidApply", testControllerKilled},
	{"Systemd_Row01_SeedLinesPresentContainerRunningWithout", testSeedSystemd},
	{"Systemd_StartedWithoutGuestMountRestarts", testSystemdStartedWithoutGuestMount},
	{"Systemd_ReadyPushedByTheShippedUnit", testSystemdReadiness},
	{"Systemd_LegacyRunGpupassHiddenIsTheReason", testSystemdLegacyRunHidden},
	{"LegacyRunGpupassMovedWithoutRestart", testLegacyRunMigratesWithoutRestart},
	{"OpenRC_ReadyPushedByTheInitScript", testOpenRCReadiness},
	{"Gate_Systemd_AppAfterGPUReadyTargetWaitsForTheFix", testSystemdAppGated},
	{"Gate_Busybox_WaitThenExecApp", testBusyboxAppGated},
	{"Gate_OpenRC_WaitThenExecAppAsTheCommand", testOpenRCAppGated},
	{"HostBoot_AgentReadyBeforePveGuests", testHostBootOrder},
	{"DriverHost_UpgradeRestartsAndRealigns", testDriverHostUpgrade},
	{"Contract_ModelStatusOfRunningContainers", testModelStatusOfRunningContainers},
	{"Contract_ModelAppliesToRunningContainers", testModelAppliesToRunningContainers},
}

// TestE2E runs every scenario against real LXC containers, in parallel, on one fabric
// (bridge namespace, PKI, binaries) shared by all. Each scenario makes its own hosts
// (agent processes in their own network namespaces) and containers.
func TestE2E(t *testing.T) {
	ensureLXC(t)
	testenv.RequireLXC(t)
	testenv.RequireCommands(t, "ip", "nsenter", "go")
	lxctest.RequireCgroup2(t)
	start := time.Now()
	f := newFabric(t)
	t.Cleanup(func() { t.Logf("e2e: suite wall time %v", time.Since(start).Round(time.Millisecond)) })
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			s.fn(t, f)
		})
	}
}

// ensureLXC installs LXC and a static busybox when they are missing and the suite runs
// as root on Debian (scripts/deps.sh installs the same and more).
func ensureLXC(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("lxc-start"); err == nil {
		if _, err := os.Stat("/bin/busybox"); err == nil {
			return
		}
	}
	if os.Geteuid() != 0 {
		return // RequireLXC skips (fails in CI)
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return
	}
	t.Log("e2e: installing lxc and busybox-static")
	cmd := exec.Command("apt-get", "install", "-y", "-qq", "--no-install-recommends", "lxc", "busybox-static", "uidmap", "iproute2", "util-linux")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Logf("e2e: apt-get install: %v: %s", err, strings.TrimSpace(string(out)))
	}
}
