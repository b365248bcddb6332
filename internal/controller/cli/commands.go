package cli

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"gpupass/internal/controller"
	"gpupass/internal/controller/render"
)

func parseDuration(flag, s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%s %q: use a positive duration such as 10s or 2m", flag, s)
	}
	return d, nil
}

// report writes r in the chosen format and returns its exit code as an error.
func report(io *IO, output string, r *controller.Report) error {
	if output == "json" {
		if err := render.JSON(io.Stdout, r); err != nil {
			return err
		}
	} else {
		render.Report(io.Stdout, r, io.style())
	}
	if code := r.ExitCode(); code != controller.ExitOK {
		return exitCode(code)
	}
	return nil
}

// driverVersionRE is an NVIDIA driver version: 580.159.04, 535.104.05, 418.87.
var driverVersionRE = regexp.MustCompile(`^[0-9]{2,4}\.[0-9]{1,4}(\.[0-9]{1,4})?$`)

func newPlan(io *IO) *cobra.Command {
	var f fleetFlags
	var driverVersion string
	cmd := &cobra.Command{
		Use:   "plan -f fleet.yaml [-o table|json]",
		Short: "Show what apply would change on every host, and which containers it would restart",
		Long: `plan asks every host agent at once what it would change in each container's config and
whether the container would be restarted (and why). It changes nothing.

Exit codes: 0 nothing to change, 2 changes pending, 1 error (a host could not be asked).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := open(io, &f, f.timeout)
			if err != nil {
				return err
			}
			defer s.close()
			if driverVersion != "" {
				if !driverVersionRE.MatchString(driverVersion) {
					return fmt.Errorf("--driver-version %q: want an NVIDIA driver version such as 580.159.04", driverVersion)
				}
				return report(io, f.output, s.ctl.PlanDriverVersion(cmd.Context(), driverVersion))
			}
			return report(io, f.output, s.ctl.Plan(cmd.Context()))
		},
	}
	f.add(cmd, "per host: connect, TLS, hello and answer", controller.DefaultTimeout.String(), controller.DefaultParallel, "hosts asked at once")
	cmd.Flags().StringVar(&driverVersion, "driver-version", "", "also say what a host driver change to this version (580.159.04) would do to each container: driver: host ones realign at their next start, own ones break unless their userspace is that version")
	return cmd
}

func newStatus(io *IO) *cobra.Command {
	var f fleetFlags
	var watch bool
	cmd := &cobra.Command{
		Use:   "status -f fleet.yaml [-o table|json] [--watch]",
		Short: "Show which GPU containers are ready, and if not, why",
		Long: `status asks every host agent at once; each answers from what its guests already reported,
so the whole fleet costs one round trip per host. With --watch it then streams every
readiness change from all hosts until interrupted (JSON: one object per line).

Exit codes: 0 all ready (a stopped container counts when the fleet does not ask for it to
run), 2 some not ready, 1 error (a host could not be asked).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := open(io, &f, f.timeout)
			if err != nil {
				return err
			}
			defer s.close()
			if !watch {
				return report(io, f.output, s.ctl.Status(cmd.Context()))
			}
			var werr error
			err = s.ctl.Watch(cmd.Context(), func(ev controller.Event) {
				if f.output == "json" {
					if err := render.WatchJSON(io.Stdout, ev); err != nil && werr == nil {
						werr = err
					}
					return
				}
				render.WatchLine(io.Stdout, ev, io.style())
			})
			if err != nil {
				return err
			}
			return werr
		},
	}
	f.add(cmd, "per host: connect, TLS, hello and answer", controller.DefaultTimeout.String(), controller.DefaultParallel, "hosts asked at once")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "stream readiness changes until interrupted")
	return cmd
}

func newApply(io *IO) *cobra.Command {
	var f fleetFlags
	var connect, planFile string
	var applyPending bool
	cmd := &cobra.Command{
		Use:   "apply -f fleet.yaml [-o table|json] [--parallel N] [--timeout D] [--plan plan.json]",
		Short: "Make every host match the fleet: write configs, restart where needed, wait for readiness",
		Long: `apply sends each host its containers; the host agent journals, locks, writes the config,
restarts a container only when the running one differs from what is desired, and waits
for the guest's readiness report (--timeout per container). On failure it restores the
config and the container. Progress shows live on a terminal, as lines otherwise, then a
summary.

With --plan, apply only what a reviewed plan showed: save it with
  gpupass plan -f fleet.yaml -o json > plan.json
and a container whose config changed since (another tool, a person) is refused with a
conflict and left untouched: run plan again.

Exit codes: 0 all ready, 2 some not ready, 1 error (a host failed or could not be asked).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			readiness, err := parseDuration("--timeout", f.timeout)
			if err != nil {
				return err
			}
			var digests map[string]string
			if planFile != "" {
				if digests, err = controller.LoadPlanDigests(planFile); err != nil {
					return err
				}
			}
			s, err := open(io, &f, connect)
			if err != nil {
				return err
			}
			defer s.close()
			fl := s.fleet
			style := io.style()
			var p *render.Progress
			if f.output == "json" {
				p = render.NewProgress(io.Stderr, fl, false, style)
			} else {
				p = render.NewProgress(io.Stdout, fl, io.Terminal, style)
			}
			r := s.ctl.Apply(cmd.Context(), controller.ApplyOptions{Timeout: readiness, Parallel: f.parallel, Progress: p.Update, Digests: digests, ApplyPending: applyPending})
			p.Finish()
			if f.output != "json" {
				fmt.Fprintln(io.Stdout)
			}
			return report(io, f.output, r)
		},
	}
	f.add(cmd, "readiness deadline per container", controller.DefaultApplyTimeout.String(), controller.DefaultApplyParallel, "hosts applied at once")
	connect = controller.DefaultTimeout.String()
	cmd.Flags().Var((*durationFlag)(&connect), "connect-timeout", "per host: connect, TLS and hello")
	cmd.Flags().StringVar(&planFile, "plan", "", "a saved plan (gpupass plan -o json): refuse containers whose config changed since")
	cmd.Flags().BoolVar(&applyPending, "apply-pending", false, "allow restarts that apply Proxmox pending changes ([pve:pending], listed by plan)")
	return cmd
}

func newDoctor(io *IO) *cobra.Command {
	var f fleetFlags
	cmd := &cobra.Command{
		Use:   "doctor -f fleet.yaml HOST/ID",
		Short: "Explain why a container is not ready, and the command that fixes it",
		Long: `doctor asks the container's host for its inventory, the container's status and what
apply would change, and explains: what the host has (driver, GPUs, majors), what the
config has (changes pending), what the guest sees (each device, the driver versions),
the likely cause of each problem and the command that fixes it.

Exit codes: 0 ready with nothing to change, 2 not ready or changes pending, 1 error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			host, id, ok := strings.Cut(args[0], "/")
			if !ok || host == "" || id == "" {
				return fmt.Errorf("%q: name the container as HOST/ID, e.g. pve1/901", args[0])
			}
			s, err := open(io, &f, f.timeout)
			if err != nil {
				return err
			}
			defer s.close()
			d, err := s.ctl.Doctor(cmd.Context(), host, id)
			if err != nil {
				return err
			}
			if f.output == "json" {
				if err := render.JSON(io.Stdout, doctorJSON(d)); err != nil {
					return err
				}
			} else {
				render.Doctor(io.Stdout, d, io.style())
			}
			if code := d.ExitCode(); code != controller.ExitOK {
				return exitCode(code)
			}
			return nil
		},
	}
	f.add(cmd, "connect, TLS, hello and answers", controller.DefaultTimeout.String(), 1, "unused")
	_ = cmd.Flags().MarkHidden("parallel")
	return cmd
}

type doctorOut struct {
	Host      controller.Host      `json:"host"`
	Container controller.Container `json:"container"`
	InFleet   bool                 `json:"in_fleet"`
	Findings  []controller.Finding `json:"findings"`
}

func doctorJSON(d *controller.Diagnosis) doctorOut {
	f := d.Findings
	if f == nil {
		f = []controller.Finding{}
	}
	return doctorOut{Host: d.Host, Container: d.Container, InFleet: d.InFleet, Findings: f}
}
