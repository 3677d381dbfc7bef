package graflow

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/oklog/ulid/v2"
	"github.com/rs/zerolog"
)

// Schedule errors.
var (
	// ErrScheduleNotFound is returned (wrapped, with the name) by the
	// methods that name a schedule that does not exist.
	ErrScheduleNotFound = errors.New("schedule not found")
	// ErrScheduleExists is returned by AddSchedule for a name in use
	// (set Schedule.Replace to replace it); nothing was written.
	ErrScheduleExists = errors.New("schedule already exists")
)

// Schedule is a recurring run: the workflow Spec, submitted at every tick
// of Cron in Timezone (see AddSchedule).
type Schedule struct {
	// Name: 1-100 letters, digits, '_', '.', '-', starting with a letter or
	// digit. Each tick's run id is "<Name>-<tick UTC as 20060102T150405Z>".
	Name string
	// Cron: 5 fields "minute hour day-of-month month day-of-week" ("0 3 * *
	// *", "*/15 9-17 * * mon-fri") or a descriptor: @yearly, @monthly,
	// @weekly, @daily, @hourly, @every <duration> (whole seconds, ticking
	// at multiples of the duration since the Unix epoch, UTC).
	Cron string
	// Timezone is the IANA zone Cron is read in (default UTC), e.g.
	// "Europe/Paris": "0 3 * * *" is then 03:00 Paris time, summer and
	// winter.
	Timezone string
	// Spec is the workflow: scheduler.ParseSpec of a spec file, or
	// Workflow.Spec.
	Spec events.RunSubmittedBody
	// Input, when set, replaces Spec's input (any JSON value).
	Input json.RawMessage
	// Replace replaces a schedule of the same name (it starts afresh:
	// unpaused, no tick fired). Without it, a name in use is
	// ErrScheduleExists.
	Replace bool
}

// ScheduleInfo is a schedule as Schedules lists it.
type ScheduleInfo struct {
	Name     string    `json:"name"`
	Cron     string    `json:"cron"`
	Timezone string    `json:"timezone"`
	Workflow string    `json:"workflow"`
	Paused   bool      `json:"paused"`
	Created  time.Time `json:"created"`
	// Next is the next tick to fire, in Timezone; zero when paused. It is
	// in the past when a tick is due that no scheduler has fired yet.
	Next time.Time `json:"next,omitzero"`
	// Overdue: a tick has been due for longer than a running scheduler
	// takes to fire it (scheduler.DefaultCronRefresh): is any running?
	// (see "graflow schedule run").
	Overdue bool `json:"overdue,omitempty"`
	// LastTick is the latest tick fired and LastRun its run id (empty if
	// its run could not be created: the scheduler's log says why).
	LastTick time.Time `json:"last_tick,omitzero"`
	LastRun  string    `json:"last_run,omitempty"`
	// Error says why the schedule cannot be read (schedulers skip it).
	Error string `json:"error,omitempty"`
}

// AddSchedule checks s and stores it: s.Name, s.Cron and s.Timezone
// (errors wrap scheduler.ErrInvalidSchedule) and the workflow (a
// *scheduler.ValidationError, scheduler.ErrInvalidWorkflow) are checked
// first, and nothing is written if any is invalid. A name in use is
// ErrScheduleExists unless s.Replace. The first tick to fire is the first
// one after now: a schedule never fires for its past.
//
// Adding only stores the schedule: a scheduler loop (RunSchedules, or
// "graflow schedule run") fires it, within a minute of the add.
func (c *Client) AddSchedule(ctx context.Context, s Schedule) (*ScheduleInfo, error) {
	now := c.clock.Now()
	def := scheduler.ScheduleDef{Name: s.Name, ID: ulid.Make().String(), Cron: s.Cron, Timezone: s.Timezone,
		Spec: s.Spec, Input: s.Input, Created: now.UTC()}
	expr, err := c.sched.CheckSchedule(&def)
	if err != nil {
		return nil, err
	}
	def.Cron = expr.String()
	b, err := json.Marshal(def)
	if err != nil {
		return nil, fmt.Errorf("add schedule %s: %w", s.Name, err)
	}
	st := rdb.ScheduleState{ID: def.ID, AnchorMS: now.UnixMilli()}
	out, err := c.db.AddSchedule(ctx, s.Name, string(b), st, s.Replace)
	if err != nil {
		return nil, err
	}
	if out == rdb.ScheduleExists {
		return nil, fmt.Errorf("%w: %s in namespace %q (replace it: Schedule.Replace, graflow schedule add --replace; or remove it first)", ErrScheduleExists, s.Name, c.Namespace())
	}
	info := c.scheduleInfo(&def, expr, st, now)
	return &info, nil
}

// Schedules lists the namespace's schedules, sorted by name. A schedule
// whose definition cannot be read is listed with Error set.
func (c *Client) Schedules(ctx context.Context) ([]ScheduleInfo, error) {
	defs, states, err := c.db.AllSchedules(ctx)
	if err != nil {
		return nil, err
	}
	now := c.clock.Now()
	out := make([]ScheduleInfo, 0, len(defs))
	for name, raw := range defs {
		info := ScheduleInfo{Name: name}
		var def scheduler.ScheduleDef
		st, serr := rdb.ParseScheduleState(states[name])
		var expr *scheduler.CronExpr
		err := json.Unmarshal([]byte(raw), &def)
		if err == nil {
			expr, err = scheduler.ParseCron(def.Cron, def.Timezone)
		}
		if err == nil {
			err = serr
		}
		if err == nil && st.ID != def.ID {
			err = fmt.Errorf("its state record belongs to another definition (%s, not %s)", st.ID, def.ID)
		}
		if err != nil {
			info.Error = err.Error()
			out = append(out, info)
			continue
		}
		out = append(out, c.scheduleInfo(&def, expr, st, now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// overdueSlack is how much later than DefaultCronRefresh a due tick may
// fire before Schedules calls it overdue.
const overdueSlack = 10 * time.Second

// scheduleInfo describes a schedule at now.
func (c *Client) scheduleInfo(def *scheduler.ScheduleDef, expr *scheduler.CronExpr, st rdb.ScheduleState, now time.Time) ScheduleInfo {
	tz := def.Timezone
	if tz == "" {
		tz = "UTC"
	}
	info := ScheduleInfo{Name: def.Name, Cron: def.Cron, Timezone: tz, Workflow: def.Spec.Workflow, Paused: st.Paused,
		Created: def.Created.In(expr.Location()), LastRun: st.LastRun}
	if st.LastTickMS > 0 {
		info.LastTick = time.UnixMilli(st.LastTickMS).In(expr.Location())
	}
	if st.Paused {
		return info
	}
	from := time.UnixMilli(max(st.AnchorMS, st.LastTickMS))
	if t, ok := expr.Last(from, now); ok {
		// A scheduler sees a new schedule within its refresh and fires
		// on time afterwards: only a tick due longer is a sign of trouble.
		info.Next = t
		info.Overdue = now.Sub(expr.Next(from)) > scheduler.DefaultCronRefresh+overdueSlack
	} else if !now.Before(from) {
		info.Next = expr.Next(now)
	} else {
		info.Next = expr.Next(from)
	}
	return info
}

// RemoveSchedule deletes a schedule: no tick of it fires after this
// returns (a loop in the middle of firing one may still finish it). Its
// runs are kept. ErrScheduleNotFound if there is none.
func (c *Client) RemoveSchedule(ctx context.Context, name string) error {
	ok, err := c.db.RemoveSchedule(ctx, name)
	if err != nil {
		return err
	}
	if !ok {
		return c.scheduleNotFound(name)
	}
	return nil
}

// PauseSchedule stops a schedule's ticks from firing until
// ResumeSchedule. Pausing a paused schedule does nothing.
// ErrScheduleNotFound if there is none.
func (c *Client) PauseSchedule(ctx context.Context, name string) error {
	return c.setPaused(ctx, name, true)
}

// ResumeSchedule lets a paused schedule fire again, from its first tick
// after now: the ticks that fell while it was paused never fire.
// Resuming a schedule that is not paused does nothing.
// ErrScheduleNotFound if there is none.
func (c *Client) ResumeSchedule(ctx context.Context, name string) error {
	return c.setPaused(ctx, name, false)
}

func (c *Client) setPaused(ctx context.Context, name string, paused bool) error {
	ok, _, err := c.db.SetSchedulePaused(ctx, name, paused, c.clock.Now().UnixMilli())
	if err != nil {
		return err
	}
	if !ok {
		return c.scheduleNotFound(name)
	}
	return nil
}

func (c *Client) scheduleNotFound(name string) error {
	return fmt.Errorf("%w: %s in namespace %q", ErrScheduleNotFound, name, c.Namespace())
}

// ScheduleRunOptions tune RunSchedules. A zero field means its default.
type ScheduleRunOptions struct {
	// CatchUp: which ticks fire when several are due at once, after
	// every scheduler was down (default scheduler.CatchUpLatest: only the
	// most recent).
	CatchUp scheduler.CatchUp
	// Refresh is the longest the loop sleeps between passes (default 1
	// min): how soon it sees schedules added, paused or resumed.
	Refresh time.Duration
	// Logger; nil is quiet.
	Logger *zerolog.Logger
	// Slog, when Logger is nil, receives the logs instead (bridged: see
	// internal/logbridge).
	Slog *slog.Logger
}

// RunSchedules fires the namespace's schedules until ctx ends, then
// returns nil: at each tick it submits the schedule's workflow with run id
// "<name>-<tick UTC as 20060102T150405Z>" (see scheduler.Cron). Run it in
// as many processes as you like: a tick's second submit returns the run
// the first created, so every tick makes exactly one run. The Client's
// Clock decides when ticks are due.
func (c *Client) RunSchedules(ctx context.Context, opts ScheduleRunOptions) error {
	cr, err := scheduler.NewCron(scheduler.CronConfig{Scheduler: c.sched, Clock: c.clock, CatchUp: opts.CatchUp,
		Refresh: opts.Refresh, Logger: opts.Logger, Slog: opts.Slog})
	if err != nil {
		return err
	}
	return cr.Run(ctx)
}
