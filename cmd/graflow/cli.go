package main

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The command line is built with spf13/cobra (and its pflag): it is what
// kubectl, docker, helm and gh use, so help, "help VERB", completion for
// bash/zsh/fish/powershell and --version behave as operators expect; its
// flags keep the GNU style our scripts already use (--flag value, flags
// after positionals, -- ends them). kong was the alternative: its struct
// tags would have meant rewriting every verb rather than moving it.

// version is the release, set at link time:
//
//	go build -ldflags "-X main.version=v1.2.3" ./cmd/graflow
//
// Empty: the module version and VCS revision from the build info.
var version = ""

// versionString is what --version prints.
func versionString() string {
	info, ok := debug.ReadBuildInfo()
	v := version
	if v == "" && ok {
		v = info.Main.Version
	}
	if v == "" {
		v = "(devel)"
	}
	if !ok {
		return v
	}
	var rev, at, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	out := v
	if rev != "" {
		out += " (" + rev + dirty
		if at != "" {
			out += " " + at
		}
		out += ")"
	}
	return out + " " + info.GoVersion
}

// rootCommand builds the command tree from the registered commands.
func (m *Main) rootCommand(ctx context.Context) *cobra.Command {
	root := &cobra.Command{
		Use:   "graflow",
		Short: "event-sourced workflows on Redis Streams",
		Long: `graflow: event-sourced workflows on Redis Streams.

Every command takes --redis URL (default $GRAFLOW_REDIS, else $REDIS_URL, else
redis://127.0.0.1:6379) and --namespace NS (default $GRAFLOW_NAMESPACE, else
"graflow"). Every flag can be set from the environment as GRAFLOW_<FLAG>
(--log-level: GRAFLOW_LOG_LEVEL); a flag on the command line wins.`,
		Version:       versionString(),
		SilenceErrors: true,
		SilenceUsage:  true,
		CompletionOptions: cobra.CompletionOptions{
			HiddenDefaultCmd: false,
		},
	}
	root.SetOut(m.Stdout)
	root.SetErr(m.Stderr)
	root.SetIn(m.Stdin)
	root.SetContext(ctx)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return withCode(ExitUsage, flagError(err))
	})
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names) // parents ("schedule") before their children ("schedule add")
	built := map[string]*cobra.Command{}
	for _, n := range names {
		c := commands[n]
		parent, use := root, n
		if p, child, ok := strings.Cut(n, " "); ok {
			parent, use = built[p], child
		}
		cmd := m.command(c, use)
		built[n] = cmd
		parent.AddCommand(cmd)
	}
	return root
}

// command builds one cobra command.
func (m *Main) command(c *command, use string) *cobra.Command {
	cmd := &cobra.Command{Use: use, Short: c.summary, Long: c.long, Aliases: c.aliases}
	if cmd.Long == "" {
		cmd.Long = c.summary
	}
	if c.setup == nil { // a group: "graflow schedule" alone
		cmd.RunE = func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("%s needs a subcommand:\n%s", c.name, subcommands(cmd))
			}
			return usagef("unknown %s subcommand %q; use one of:\n%s", c.name, args[0], subcommands(cmd))
		}
		return cmd
	}
	cc := &common{}
	fs := cmd.Flags()
	run := c.setup(m, fs, cc)
	m.commonFlags(fs, cc) // after the command's own, so its help lists them first
	envUsage(fs)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := checkFlags(fs); err != nil {
			return withCode(ExitUsage, err)
		}
		if err := cc.check(); err != nil {
			return withCode(ExitUsage, err)
		}
		return run(cmd.Context(), args)
	}
	return cmd
}

func subcommands(cmd *cobra.Command) string {
	var b strings.Builder
	for _, s := range cmd.Commands() {
		fmt.Fprintf(&b, "  %-8s %s\n", s.Name(), s.Short)
	}
	return strings.TrimRight(b.String(), "\n")
}

// flagError keeps the wording of Go's flag package for an unknown flag
// ("flag provided but not defined: -x"), which scripts and tests match.
func flagError(err error) error {
	if name, ok := strings.CutPrefix(err.Error(), "unknown flag: --"); ok {
		return fmt.Errorf("flag provided but not defined: -%s", name)
	}
	return err
}

// envName is the environment variable of a flag: GRAFLOW_ and the name in
// upper case with dashes as underscores (--log-level: GRAFLOW_LOG_LEVEL).
func envName(flag string) string {
	return "GRAFLOW_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// envAliases are the older variables some flags also read, after their
// GRAFLOW_ one.
var envAliases = map[string][]string{"redis": {"REDIS_URL"}}

// noEnv lists the flags the environment does not set: cobra's own, and
// the test-only switches that weaken safety, which must be asked for on
// the command line, where they show.
var noEnv = map[string]bool{"help": true, "version": true, "unsafe-no-fencing": true, "break-fencing": true}

// envUsage names each flag's variable in its help line.
func envUsage(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		if noEnv[f.Name] {
			return
		}
		vars := append([]string{envName(f.Name)}, envAliases[f.Name]...)
		f.Usage += " [$" + strings.Join(vars, ", $") + "]"
	})
}

// bindEnv sets every flag not given on the command line from its
// variable. It sets the value without marking the flag changed, so code
// that asks whether a flag was given (bench ignores REDIS_URL unless
// --redis is given) sees the command line only. A value the flag rejects
// is a usage error naming the variable.
func (m *Main) bindEnv(cmd *cobra.Command) error {
	var errs []error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || noEnv[f.Name] {
			return
		}
		for _, name := range append([]string{envName(f.Name)}, envAliases[f.Name]...) {
			v := m.Getenv(name)
			if v == "" {
				continue
			}
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("$%s=%q: invalid value for --%s: %w", name, v, f.Name, err))
			}
			return
		}
	})
	if err := errors.Join(errs...); err != nil {
		return withCode(ExitUsage, err)
	}
	return nil
}

// mayBeNegative lists the integer flags whose negative values mean
// something (documented in their help); every other integer flag must not
// be negative, and no duration may be.
var mayBeNegative = map[string]bool{"compact-log": true, "wide": true}

// mustBePositive lists the flags for which 0 means nothing sensible.
var mustBePositive = map[string]bool{
	"concurrency": true, "workers": true, "projectors": true, "runs": true,
	"submitters": true, "in-flight": true,
}

// checkFlags rejects values no command accepts, whether they came from the
// command line or the environment, instead of replacing them with a
// default.
func checkFlags(fs *pflag.FlagSet) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		switch f.Value.Type() {
		case "duration":
			if d, err := time.ParseDuration(f.Value.String()); err == nil && d < 0 {
				errs = append(errs, fmt.Errorf("--%s %s: a duration may not be negative", f.Name, d))
			}
		case "int", "int64":
			var n int64
			if _, err := fmt.Sscan(f.Value.String(), &n); err != nil {
				return
			}
			switch {
			case mustBePositive[f.Name] && n <= 0:
				errs = append(errs, fmt.Errorf("--%s %d: want at least 1", f.Name, n))
			case n < 0 && !mayBeNegative[f.Name]:
				errs = append(errs, fmt.Errorf("--%s %d: may not be negative", f.Name, n))
			}
		}
	})
	return errors.Join(errs...)
}
