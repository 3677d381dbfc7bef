package scheduler_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/scheduler"
)

func mustParseCron(t *testing.T, expr, tz string) *scheduler.CronExpr {
	t.Helper()
	e, err := scheduler.ParseCron(expr, tz)
	if err != nil {
		t.Fatalf("ParseCron(%q, %q): %v", expr, tz, err)
	}
	return e
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestParseCron(t *testing.T) {
	t.Parallel()
	t.Run("standard expressions and descriptors parse", func(t *testing.T) {
		t.Parallel()
		for _, c := range []struct{ expr, tz string }{
			{"* * * * *", ""}, {"0 3 * * *", "Europe/Paris"}, {"*/15 9-17 * * mon-fri", "America/New_York"},
			{"0 0 1 jan *", "UTC"}, {"0 0 29 2 *", ""}, {"  5 4 * * sun  ", ""},
			{"@yearly", ""}, {"@annually", ""}, {"@monthly", ""}, {"@weekly", ""}, {"@daily", "Asia/Tokyo"},
			{"@midnight", ""}, {"@hourly", ""}, {"@every 15m", ""}, {"@every 1h30m", "UTC"}, {"@every 1s", ""},
		} {
			if _, err := scheduler.ParseCron(c.expr, c.tz); err != nil {
				t.Errorf("ParseCron(%q, %q): %v", c.expr, c.tz, err)
			}
		}
	})
	t.Run("invalid expressions and zones are refused with a hint", func(t *testing.T) {
		t.Parallel()
		for _, c := range []struct{ expr, tz, says string }{
			{"", "", "empty cron expression"},
			{"* * * *", "", "expected exactly 5 fields"},
			{"* * * * * *", "", "expected exactly 5 fields"},
			{"61 * * * *", "", "above maximum"},
			{"0 25 * * *", "", "above maximum"},
			{"@fortnightly", "", "unrecognized descriptor"},
			{"@every 0s", "", "at least 1s"},
			{"@every -5m", "", "at least 1s"},
			{"@every 1500ms", "", "whole number of seconds"},
			{"@every 1h", "Europe/Paris", "takes no time zone"},
			{"0 0 30 2 *", "", "never matches"},
			{"TZ=UTC", "", "not in the expression"},
			{"CRON_TZ=Europe/Paris 0 3 * * *", "", "not in the expression"},
			{"0 3 * * *", "Mars/Olympus_Mons", "IANA name"},
			{"0 3 * * *", "Local", "differs between hosts"},
		} {
			_, err := scheduler.ParseCron(c.expr, c.tz)
			if !errors.Is(err, scheduler.ErrInvalidSchedule) || !strings.Contains(err.Error(), c.says) {
				t.Errorf("ParseCron(%q, %q) = %v, want ErrInvalidSchedule saying %q", c.expr, c.tz, err, c.says)
			}
		}
	})
}

// FuzzParseCron: the parser is third-party; whatever the input, ParseCron
// returns an error or an expression whose ticks move forward.
func FuzzParseCron(f *testing.F) {
	for _, s := range []string{"* * * * *", "0 3 * * *", "@every 5m", "TZ=", "*/0 * * * *", "1-0 * * * *", "@", "0 0 31 4 *"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, expr string) {
		e, err := scheduler.ParseCron(expr, "")
		if err != nil {
			if !errors.Is(err, scheduler.ErrInvalidSchedule) {
				t.Fatalf("ParseCron(%q): %v, not ErrInvalidSchedule", expr, err)
			}
			return
		}
		from := utc("2024-06-01T00:00:00Z")
		if n := e.Next(from); !n.After(from) {
			t.Fatalf("ParseCron(%q).Next(%v) = %v", expr, from, n)
		}
	})
}

func TestRunIDOfATick(t *testing.T) {
	t.Parallel()
	paris, _ := time.LoadLocation("Europe/Paris")
	got := scheduler.RunID("nightly", time.Date(2024, 6, 1, 3, 0, 0, 0, paris))
	if want := "nightly-20240601T010000Z"; got != want {
		t.Errorf("RunID = %q, want %q (the tick in UTC)", got, want)
	}
	long := strings.Repeat("n", scheduler.MaxScheduleName)
	if err := scheduler.ValidScheduleName(long); err != nil {
		t.Errorf("a %d-character name: %v", scheduler.MaxScheduleName, err)
	}
	if n := len(scheduler.RunID(long, time.Now())); n > 128 {
		t.Errorf("the longest name makes a %d-character run id, over 128", n)
	}
	for _, bad := range []string{"", "-x", "a b", "a|b", "a:b", long + "n", "né"} {
		if err := scheduler.ValidScheduleName(bad); !errors.Is(err, scheduler.ErrInvalidSchedule) {
			t.Errorf("ValidScheduleName(%q) = %v, want ErrInvalidSchedule", bad, err)
		}
	}
}

func TestCronExprTicks(t *testing.T) {
	t.Parallel()
	format := func(ts ...time.Time) []string {
		out := make([]string, len(ts))
		for i, t := range ts {
			out[i] = t.UTC().Format(time.RFC3339)
		}
		return out
	}
	t.Run("next is strictly after and in the expression's zone", func(t *testing.T) {
		t.Parallel()
		e := mustParseCron(t, "0 3 * * *", "Europe/Paris")
		n := e.Next(utc("2024-06-01T01:00:00Z")) // 03:00 Paris, summer time: that tick is not after itself
		if got, want := n.UTC().Format(time.RFC3339), "2024-06-02T01:00:00Z"; got != want {
			t.Errorf("Next = %s, want %s", got, want)
		}
		if n.Location().String() != "Europe/Paris" {
			t.Errorf("Next in %s, want Europe/Paris", n.Location())
		}
		// Winter: 03:00 Paris is 02:00 UTC.
		if got := e.Next(utc("2024-12-01T00:00:00Z")).UTC().Format(time.RFC3339); got != "2024-12-01T02:00:00Z" {
			t.Errorf("winter Next = %s, want 2024-12-01T02:00:00Z", got)
		}
	})
	t.Run("last is the latest tick in (after, now], whatever the gap", func(t *testing.T) {
		t.Parallel()
		for _, c := range []struct {
			expr, after, now, want string
		}{
			{"* * * * *", "2024-06-01T00:00:30Z", "2024-06-01T00:10:30Z", "2024-06-01T00:10:00Z"},
			{"* * * * *", "2024-06-01T00:00:30Z", "2024-06-01T00:01:00Z", "2024-06-01T00:01:00Z"},
			{"* * * * *", "2024-06-01T00:00:30Z", "2024-06-01T00:00:59Z", ""},
			{"* * * * *", "2024-06-01T00:01:00Z", "2024-06-01T00:01:00Z", ""}, // after itself: not again
			{"0 0 1 1 *", "2019-06-01T00:00:00Z", "2024-06-01T00:00:00Z", "2024-01-01T00:00:00Z"},
			{"0 0 29 2 *", "2020-03-01T00:00:00Z", "2024-06-01T00:00:00Z", "2024-02-29T00:00:00Z"},
			{"*/1 9 * * *", "2024-06-01T00:00:00Z", "2024-06-01T15:00:00Z", "2024-06-01T09:59:00Z"},
			{"@every 15m", "2024-06-01T00:00:00Z", "2024-06-01T10:44:59Z", "2024-06-01T10:30:00Z"},
			{"@every 15m", "2024-06-01T10:30:00Z", "2024-06-01T10:44:59Z", ""},
			{"@every 7m", "2024-06-01T00:00:00Z", "2024-06-01T00:10:00Z", "2024-06-01T00:04:00Z"}, // multiples of 7 min since 1970
		} {
			got, ok := mustParseCron(t, c.expr, "").Last(utc(c.after), utc(c.now))
			s := ""
			if ok {
				s = got.UTC().Format(time.RFC3339)
			}
			if s != c.want {
				t.Errorf("%q: Last(%s, %s) = %q, want %q", c.expr, c.after, c.now, s, c.want)
			}
		}
	})
	t.Run("ticks are the same from any start, so schedulers agree", func(t *testing.T) {
		t.Parallel()
		e := mustParseCron(t, "@every 90m", "")
		var a, b []time.Time
		for t1 := utc("2024-06-01T00:00:00Z"); len(a) < 4; {
			t1 = e.Next(t1)
			a = append(a, t1)
		}
		for t2 := utc("2024-06-01T01:07:13Z"); len(b) < 3; { // another process, another start
			t2 = e.Next(t2)
			b = append(b, t2)
		}
		if diff := cmp.Diff(format(a[:3]...), format(b...)); diff != "" {
			t.Errorf("two starts disagree (-from midnight +from 01:07:13):\n%s", diff)
		}
	})
}

// robfig/cron's Next skipped a tick that exists around some offset
// changes, so a scheduler catching up (CatchUpAll) never fired it: Lord
// Howe Island falls back 30 minutes at 02:00 on 2025-04-06, and 09:00
// that day exists (once); in Beirut, summer time starts at 00:00 on Sunday
// 2025-03-30, and that day's 03:00 exists (found by an audit).
func TestCatchUpAllFiresTicksAroundOffsetChanges(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		expr, tz, after, now, tick string
	}{
		{"0 9 * * *", "Australia/Lord_Howe", "2025-04-05T09:00:00+11:00", "2025-04-08T12:00:00+10:30", "2025-04-06T09:00:00+10:30"},
		{"0 3 * * 0", "Asia/Beirut", "2025-03-23T03:00:00+02:00", "2025-04-07T00:00:00+03:00", "2025-03-30T03:00:00+03:00"},
	} {
		e := mustParseCron(t, c.expr, c.tz)
		after, now, tick := utc(c.after), utc(c.now), utc(c.tick)
		var ticks []time.Time // what catching up fires: Next after Next
		for n := e.Next(after); !n.IsZero() && !n.After(now); n = e.Next(n) {
			ticks = append(ticks, n)
		}
		if !slices.ContainsFunc(ticks, tick.Equal) {
			t.Errorf("%s in %s: catching up from %s to %s fires %v; the tick %s is missing", c.expr, c.tz, c.after, c.now, ticks, c.tick)
		}
		if n := e.Next(after); !n.Equal(tick) {
			t.Errorf("%s in %s: Next(%s) = %s, want %s", c.expr, c.tz, c.after, n, c.tick)
		}
	}
}
