package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/graflow-go/graflow/internal/logbridge"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
	_ "time/tzdata" // --tz works on hosts without a zoneinfo database (scratch containers)

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/jonboulle/clockwork"
	"github.com/robfig/cron/v3"
	"github.com/rs/zerolog"
)

// Recurring runs: a schedule submits a workflow spec at every tick of a
// cron expression. Its run ids are a function of the schedule and the tick
// (RunID), and submitting an existing run id returns that run, so any
// number of Cron loops may run at once and each tick still makes exactly
// one run.

// ErrInvalidSchedule is wrapped by the errors of a schedule whose name,
// cron expression or time zone is invalid; nothing was written for it. A
// schedule whose workflow is invalid returns the workflow's
// *ValidationError (ErrInvalidWorkflow) instead.
var ErrInvalidSchedule = errors.New("invalid schedule")

// CatchUp says which ticks fire when a schedule's loop finds several due
// at once: after every scheduler was down, or stopped, for a while.
type CatchUp string

// Catch-up policies.
const (
	// CatchUpLatest fires only the most recent due tick; the older ones
	// are skipped (the default, as a Kubernetes CronJob does).
	CatchUpLatest CatchUp = "latest"
	// CatchUpAll fires every due tick, oldest first.
	CatchUpAll CatchUp = "all"
)

// Defaults of CronConfig.
const (
	// DefaultCronRefresh is the longest a Cron sleeps: how soon it sees a
	// schedule added, replaced, paused or resumed.
	DefaultCronRefresh = time.Minute
	// DefaultCronRetryDelay is how soon a Cron tries again after an error
	// (Redis unreachable).
	DefaultCronRetryDelay = 5 * time.Second
)

// cronBatch bounds the ticks one pass fires for one schedule (CatchUpAll
// after a long downtime), so one schedule's backlog does not hold up the
// others: the next pass starts at once and fires the next batch.
const cronBatch = 100

// MaxScheduleName bounds a schedule's name, so that "<name>-<tick>" is a
// valid run id (at most 128 characters).
const MaxScheduleName = 100

var scheduleNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// ValidScheduleName checks a schedule's name: 1 to MaxScheduleName
// letters, digits, '_', '.' and '-', starting with a letter or digit.
func ValidScheduleName(name string) error {
	if len(name) > MaxScheduleName || !scheduleNameRE.MatchString(name) {
		return fmt.Errorf("%w: name %q: use 1-%d letters, digits, '_', '.', '-', starting with a letter or digit", ErrInvalidSchedule, name, MaxScheduleName)
	}
	return nil
}

// tickFormat is the tick's part of a run id.
const tickFormat = "20060102T150405Z"

// RunID is the run id of a schedule's tick: "<name>-<tick in UTC as
// 20060102T150405Z>", e.g. "nightly-20240601T030000Z". Every scheduler
// computes the same id for the same tick.
func RunID(name string, tick time.Time) string { return name + "-" + tick.UTC().Format(tickFormat) }

// CronExpr is a parsed cron expression in its time zone. Its ticks are a
// function of the expression and the zone alone, the same in every
// process. Safe for concurrent use.
type CronExpr struct {
	expr string
	loc  *time.Location
	// spec is a calendar expression; nil for @every, whose ticks are the
	// multiples of every since the Unix epoch.
	spec  *cron.SpecSchedule
	every time.Duration
}

// cronParser accepts the standard 5 fields (minute hour day-of-month month
// day-of-week) and descriptors (@yearly, @annually, @monthly, @weekly,
// @daily, @midnight, @hourly, @every <duration>).
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// cronHelp ends every cron expression error.
const cronHelp = `use 5 fields "minute hour day-of-month month day-of-week" (e.g. "0 3 * * *", "*/15 9-17 * * mon-fri") or @yearly, @monthly, @weekly, @daily, @hourly, @every 15m`

// cronCheckFrom is where ParseCron looks for a first tick: an expression
// that can match finds one within robfig/cron's five-year horizon from any
// date, so one that finds none never fires.
var cronCheckFrom = time.Date(2000, time.January, 1, 0, 0, 0, 0, time.UTC)

// ParseCron parses a cron expression (see cronParser) in an IANA time zone
// ("" is UTC). "Local" is refused (two hosts may disagree on it), and so
// is a TZ= or CRON_TZ= prefix (give the zone as timezone). @every takes a
// whole number of seconds, at least 1s, and ticks at its multiples since
// the Unix epoch (@every 15m: :00, :15, :30, :45 UTC), so it takes no time
// zone. Errors wrap ErrInvalidSchedule and say what to write instead.
func ParseCron(expr, timezone string) (e *CronExpr, err error) {
	expr = strings.TrimSpace(expr)
	loc := time.UTC
	if timezone != "" && timezone != "UTC" {
		if timezone == "Local" {
			return nil, fmt.Errorf("%w: time zone \"Local\" differs between hosts: name the zone, e.g. Europe/Paris", ErrInvalidSchedule)
		}
		if loc, err = time.LoadLocation(timezone); err != nil {
			return nil, fmt.Errorf("%w: time zone %q: %w (use an IANA name such as Europe/Paris or America/New_York)", ErrInvalidSchedule, timezone, err)
		}
	}
	if expr == "" {
		return nil, fmt.Errorf("%w: empty cron expression: %s", ErrInvalidSchedule, cronHelp)
	}
	if strings.HasPrefix(expr, "TZ=") || strings.HasPrefix(expr, "CRON_TZ=") {
		return nil, fmt.Errorf("%w: cron expression %q: give the time zone as the schedule's time zone (--tz), not in the expression", ErrInvalidSchedule, expr)
	}
	defer func() { // the parser is not ours: a panic on odd input is an invalid expression
		if r := recover(); r != nil {
			e, err = nil, fmt.Errorf("%w: cron expression %q: %v: %s", ErrInvalidSchedule, expr, r, cronHelp)
		}
	}()
	if d, ok := strings.CutPrefix(expr, "@every "); ok {
		every, perr := time.ParseDuration(d)
		if perr != nil || every < time.Second || every%time.Second != 0 {
			return nil, fmt.Errorf("%w: cron expression %q: @every takes a whole number of seconds, at least 1s (e.g. @every 15m, @every 1h30m)", ErrInvalidSchedule, expr)
		}
		if loc != time.UTC {
			return nil, fmt.Errorf("%w: cron expression %q: @every ticks at multiples of its period since the Unix epoch (UTC), so it takes no time zone: drop the time zone, or write a calendar expression such as \"0 0 * * *\"", ErrInvalidSchedule, expr)
		}
		return &CronExpr{expr: expr, loc: loc, every: every}, nil
	}
	s, perr := cronParser.Parse(expr)
	if perr != nil {
		return nil, fmt.Errorf("%w: cron expression %q: %w: %s", ErrInvalidSchedule, expr, perr, cronHelp)
	}
	spec, ok := s.(*cron.SpecSchedule)
	if !ok {
		return nil, fmt.Errorf("%w: cron expression %q: %s", ErrInvalidSchedule, expr, cronHelp)
	}
	spec.Location = loc
	if spec.Next(cronCheckFrom).IsZero() {
		return nil, fmt.Errorf("%w: cron expression %q never matches a date (e.g. the 30th of February)", ErrInvalidSchedule, expr)
	}
	return &CronExpr{expr: expr, loc: loc, spec: spec}, nil
}

// String returns the expression as parsed.
func (e *CronExpr) String() string { return e.expr }

// Location returns the expression's time zone.
func (e *CronExpr) Location() *time.Location { return e.loc }

// Next returns the first tick strictly after t, in the expression's time
// zone; the zero time if there is none within five years.
func (e *CronExpr) Next(t time.Time) time.Time {
	if e.spec == nil {
		d := int64(e.every / time.Second)
		return time.Unix((floorDiv(t.Unix(), d)+1)*d, 0).In(e.loc)
	}
	n := e.spec.Next(t)
	if n.IsZero() {
		return n
	}
	// robfig/cron's Next skips a tick that exists when its search crosses
	// some offset changes (zones that change at midnight, such as
	// Beirut's) or starts in a repeated interval (Lord Howe's 30-minute
	// fall back): search again from each change between t and n, an hour
	// after it and from its local day's start, and keep the earliest tick
	// after t.
	for at := t; ; {
		_, end := at.In(e.loc).ZoneBounds()
		if end.IsZero() || !end.Before(n) {
			break
		}
		y, m, d := end.In(e.loc).Date()
		for _, from := range []time.Time{end.Add(-time.Second), end, end.Add(time.Hour), time.Date(y, m, d, 0, 0, 0, 0, e.loc).Add(-time.Second)} {
			if c := e.spec.Next(from); !c.IsZero() && c.After(t) && c.Before(n) {
				n = c
			}
		}
		at = end
	}
	return n.In(e.loc)
}

// Last returns the latest tick in (after, now]; ok is false if there is
// none. It costs a few Next calls whatever the gap: it widens a window
// back from now until the window holds a tick (or reaches after).
func (e *CronExpr) Last(after, now time.Time) (tick time.Time, ok bool) {
	if !now.After(after) {
		return time.Time{}, false
	}
	if e.spec == nil {
		d := int64(e.every / time.Second)
		t := time.Unix(floorDiv(now.Unix(), d)*d, 0).In(e.loc)
		return t, t.After(after)
	}
	for step := time.Minute; ; step *= 2 {
		from := now.Add(-step)
		if !from.After(after) || step > 100*365*24*time.Hour {
			from = after
		}
		if t := e.Next(from); !t.IsZero() && !t.After(now) {
			for {
				n := e.Next(t)
				if n.IsZero() || n.After(now) {
					return t, true
				}
				t = n
			}
		}
		if from.Equal(after) {
			return time.Time{}, false
		}
	}
}

// due returns the ticks in (after, now] that policy fires, oldest first,
// at most cronBatch of them; more says due ticks were left for the next
// pass.
func (e *CronExpr) due(after, now time.Time, policy CatchUp) (ticks []time.Time, more bool) {
	if policy != CatchUpAll {
		if t, ok := e.Last(after, now); ok {
			return []time.Time{t}, false
		}
		return nil, false
	}
	for t := after; ; {
		t = e.Next(t)
		if t.IsZero() || t.After(now) {
			return ticks, false
		}
		if len(ticks) == cronBatch {
			return ticks, true
		}
		ticks = append(ticks, t)
	}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// ScheduleDef is a schedule's definition as stored (JSON, one field of the
// namespace's schedules hash). It is written once, when the schedule is
// added or replaced.
type ScheduleDef struct {
	Name string `json:"name"`
	// ID is the definition's generation, a ULID given when it was added.
	ID       string `json:"id"`
	Cron     string `json:"cron"`
	Timezone string `json:"timezone,omitempty"`
	// Spec is the workflow each tick submits, as scheduler.ParseSpec
	// returns it for a spec file (or Workflow.Spec in Go).
	Spec events.RunSubmittedBody `json:"spec"`
	// Input, when set, replaces Spec's input.
	Input   json.RawMessage `json:"input,omitempty"`
	Created time.Time       `json:"created"`
}

// RunSpec is the definition every tick submits: Spec, with Input as its
// input when set.
func (d *ScheduleDef) RunSpec() events.RunSubmittedBody {
	s := d.Spec
	if len(d.Input) > 0 {
		s.Input = d.Input
	}
	return s
}

// CheckSchedule validates the definition's name, cron expression and time zone
// (errors wrap ErrInvalidSchedule) and, with the Scheduler's limits, the
// workflow it submits (a *ValidationError), and returns the parsed
// expression.
func (s *Scheduler) CheckSchedule(d *ScheduleDef) (*CronExpr, error) {
	if err := ValidScheduleName(d.Name); err != nil {
		return nil, err
	}
	e, err := ParseCron(d.Cron, d.Timezone)
	if err != nil {
		return nil, err
	}
	if len(d.Input) > 0 && !json.Valid(d.Input) {
		return nil, fmt.Errorf("%w: input of schedule %s is not valid JSON", ErrInvalidSchedule, d.Name)
	}
	if err := Validate(d.RunSpec(), ValidateOptions{MaxPayloadBytes: s.cfg.MaxPayloadBytes}); err != nil {
		return nil, err
	}
	return e, nil
}

// CronConfig configures a Cron. A zero field means its default.
type CronConfig struct {
	// Scheduler submits the runs, in its namespace, whose schedules fire
	// (required).
	Scheduler *Scheduler
	// Clock decides when ticks are due and wakes the loop (default the
	// real clock; tests pass clockwork.NewFakeClock()).
	Clock clockwork.Clock
	// CatchUp decides which of several due ticks fire (default
	// CatchUpLatest).
	CatchUp CatchUp
	// Refresh is the longest the loop sleeps (default DefaultCronRefresh):
	// a schedule added, replaced, paused or resumed is seen within it.
	Refresh time.Duration
	// RetryDelay is how soon the loop tries again after an error (default
	// DefaultCronRetryDelay).
	RetryDelay time.Duration
	// Logger; nil is quiet.
	Logger *zerolog.Logger
	// Slog, when Logger is nil, receives the logs instead (bridged: see
	// internal/logbridge).
	Slog *slog.Logger
}

func (c CronConfig) withDefaults() CronConfig {
	if c.Clock == nil {
		c.Clock = clockwork.NewRealClock()
	}
	if c.CatchUp == "" {
		c.CatchUp = CatchUpLatest
	}
	if c.Refresh == 0 {
		c.Refresh = DefaultCronRefresh
	}
	if c.RetryDelay == 0 {
		c.RetryDelay = DefaultCronRetryDelay
	}
	if c.Logger == nil {
		c.Logger = logbridge.Zerolog(c.Slog)
	}
	if c.Logger == nil {
		l := zerolog.Nop()
		c.Logger = &l
	}
	return c
}

func (c CronConfig) validate() error {
	var errs []error
	if c.Scheduler == nil {
		errs = append(errs, errors.New("cron: Config.Scheduler is required"))
	}
	if c.CatchUp != CatchUpLatest && c.CatchUp != CatchUpAll {
		errs = append(errs, fmt.Errorf("cron: catch-up policy %q: use %q or %q", c.CatchUp, CatchUpLatest, CatchUpAll))
	}
	if c.Refresh < 0 || c.RetryDelay < 0 {
		errs = append(errs, errors.New("cron: Refresh and RetryDelay must not be negative"))
	}
	return errors.Join(errs...)
}

// Cron fires the namespace's schedules: on each pass it reads every
// schedule's state, submits the due ticks' runs under their RunID, records
// each tick fired, and sleeps until the next tick (at most Refresh). Any
// number of Cron loops, in any processes, may serve one namespace: each
// tick still makes one run (a second submit of its run id returns the
// first run), and the recorded tick only moves forward.
//
// A tick is due when it falls after the schedule was added or last
// resumed and after its last recorded tick, and no later than now. A tick
// whose run cannot be created (the spec no longer validates, or the id
// names a run of another workflow) is logged and recorded as fired, so it
// is not tried forever; a Redis error leaves the tick due for the next
// pass.
type Cron struct {
	cfg   CronConfig
	sched *Scheduler
	db    rdb.DB
	log   zerolog.Logger
	// defs caches decoded definitions by name, valid while the state's
	// generation id matches: a pass reads only small state records.
	defs map[string]*cronDef
}

// cronDef is a decoded definition.
type cronDef struct {
	id   string // the generation read (the state's: valid even if def is not)
	def  ScheduleDef
	expr *CronExpr
	spec events.RunSubmittedBody
	err  error // the definition does not decode or parse: skipped
}

// NewCron returns a Cron.
func NewCron(cfg CronConfig) (*Cron, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Cron{cfg: cfg, sched: cfg.Scheduler, db: cfg.Scheduler.db, log: cfg.Logger.With().Str("component", "cron").Logger(),
		defs: map[string]*cronDef{}}, nil
}

// Run fires due ticks until ctx ends, then returns nil. It sleeps on the
// Clock's timer between passes: until the next tick, at most Refresh, or
// RetryDelay after an error. Call Run once per Cron (start several Cron
// values for several loops).
func (c *Cron) Run(ctx context.Context) error {
	c.log.Info().Str("namespace", c.db.K.Namespace()).Str("catch_up", string(c.cfg.CatchUp)).Msg("scheduler started")
	defer c.log.Info().Msg("scheduler stopped")
	for {
		next, more, err := c.pass(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := c.cfg.Refresh
		switch {
		case more:
			wait = 0
		case !next.IsZero():
			wait = min(wait, next.Sub(c.cfg.Clock.Now()))
		}
		if err != nil {
			c.log.Warn().Err(err).Stringer("retry_in", c.cfg.RetryDelay).Msg("scheduler pass failed")
			wait = min(wait, c.cfg.RetryDelay)
		}
		if wait <= 0 {
			continue
		}
		t := c.cfg.Clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.Chan():
		}
	}
}

// pass fires every schedule's due ticks and returns the earliest next tick
// (zero if none); more says a schedule has due ticks left (CatchUpAll).
func (c *Cron) pass(ctx context.Context) (next time.Time, more bool, err error) {
	raw, err := c.db.ScheduleStates(ctx)
	if err != nil {
		return time.Time{}, false, err
	}
	states := make(map[string]rdb.ScheduleState, len(raw))
	load := map[string]string{} // name → generation to read
	for name, v := range raw {
		st, err := rdb.ParseScheduleState(v)
		if err != nil {
			c.log.Error().Err(err).Str("schedule", name).Msg("schedule skipped")
			continue
		}
		states[name] = st
		if d := c.defs[name]; d == nil || d.id != st.ID {
			load[name] = st.ID
		}
	}
	for name := range c.defs {
		if _, ok := states[name]; !ok {
			delete(c.defs, name)
		}
	}
	if err := c.load(ctx, load); err != nil {
		return time.Time{}, false, err
	}
	names := make([]string, 0, len(states))
	for name := range states {
		names = append(names, name)
	}
	slices.Sort(names)
	var errs []error
	for _, name := range names {
		st, d := states[name], c.defs[name]
		if d == nil || d.err != nil || d.id != st.ID || st.Paused {
			continue // gone, unreadable, replaced since the states were read, or paused
		}
		from := time.UnixMilli(max(st.AnchorMS, st.LastTickMS))
		ticks, left := d.expr.due(from, c.cfg.Clock.Now(), c.cfg.CatchUp)
		for _, tick := range ticks {
			if err := c.fire(ctx, name, st.ID, d, tick); err != nil {
				if ctx.Err() != nil {
					return time.Time{}, false, ctx.Err()
				}
				errs = append(errs, err)
				left = false // retried after RetryDelay, not at once
				break
			}
			from = tick
		}
		more = more || left
		if n := d.expr.Next(later(from, c.cfg.Clock.Now())); !n.IsZero() && (next.IsZero() || n.Before(next)) {
			next = n
		}
	}
	return next, more, errors.Join(errs...)
}

// load reads and decodes the definitions of names (name → the
// generation its state names) into the cache. A definition of another
// generation (replaced between the two reads) is cached as such, and
// read again at the next pass.
func (c *Cron) load(ctx context.Context, names map[string]string) error {
	if len(names) == 0 {
		return nil
	}
	raw, err := c.db.ScheduleDefs(ctx, slices.Collect(maps.Keys(names)))
	if err != nil {
		return err
	}
	for name, id := range names {
		v, ok := raw[name]
		if !ok {
			delete(c.defs, name) // removed since its state was read
			continue
		}
		d := &cronDef{id: id}
		if d.err = json.Unmarshal([]byte(v), &d.def); d.err == nil {
			d.expr, d.err = ParseCron(d.def.Cron, d.def.Timezone)
			d.spec = d.def.RunSpec()
		}
		if d.err == nil && d.def.ID != id {
			d.id = d.def.ID // replaced meanwhile: used once the state names it
		}
		if d.err != nil {
			c.log.Error().Err(d.err).Str("schedule", name).Msg("schedule definition unreadable: skipped (add it again)")
		}
		c.defs[name] = d
	}
	return nil
}

// fire submits tick's run and records the tick. It returns an error only
// for what a later pass may fix (Redis); a run that cannot be created is
// logged and the tick recorded with no run.
func (c *Cron) fire(ctx context.Context, name, id string, d *cronDef, tick time.Time) error {
	run := RunID(name, tick)
	log := c.log.With().Str("schedule", name).Str("tick", tick.UTC().Format(time.RFC3339)).Str("run", run).Logger()
	_, created, err := c.sched.Submit(ctx, d.spec, SubmitOptions{RunID: run})
	switch {
	case errors.Is(err, ErrInvalidWorkflow) || errors.Is(err, ErrRunExists) || errors.Is(err, ErrInvalidRunID):
		log.Error().Err(err).Msg("tick skipped: its run cannot be created")
		run = "" // recorded as fired, with no run of its own
	case err != nil:
		return fmt.Errorf("schedule %s, tick %s: %w", name, tick.UTC().Format(time.RFC3339), err)
	case created:
		log.Info().Msg("schedule fired")
	default:
		log.Debug().Msg("schedule tick already fired elsewhere")
	}
	if _, err := c.db.RecordScheduleFired(ctx, name, id, tick.UnixMilli(), run); err != nil {
		return err
	}
	return nil
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
