package rdb

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// ErrLayout is returned (wrapped) when a namespace's keys were written with
// another key layout or another number of partitions than this process
// uses: its runs, queues and feeds would be invisible to it.
var ErrLayout = errors.New("the namespace uses another key layout")

// layoutValue is what the layout key holds: "<version>:<partitions>".
func (k Keys) layoutValue() string {
	return strconv.Itoa(LayoutVersion) + ":" + strconv.Itoa(k.partitions)
}

// CheckLayout records the namespace's key layout and partition count the
// first time a process starts on it, and refuses one that was recorded
// otherwise, or a namespace whose run index predates the record (runs of
// layout 1, whose keys this build does not read). Workers and projectors
// call it before they start.
func (d DB) CheckLayout(ctx context.Context) error {
	want := d.K.layoutValue()
	set, err := d.C.SetNX(ctx, d.K.Layout(), want, 0).Result()
	if err != nil {
		return fmt.Errorf("check key layout: %w", err)
	}
	if !set {
		got, err := d.C.Get(ctx, d.K.Layout()).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("check key layout: %w", err)
		}
		if got != want && (got == "2:1" || got == "3:"+strconv.Itoa(d.K.partitions)) {
			return fmt.Errorf("%w: namespace %q was written by an older release (layout %s), which kept a run's task metadata and results in hashes of their own; this release keeps them in the run's state hash (layout %d): finish its runs with the release that wrote them (or export them and import them into a new namespace), or use another namespace",
				ErrLayout, d.K.Namespace(), got, LayoutVersion)
		}
		if got != want && got == "2:"+strconv.Itoa(d.K.partitions) {
			return fmt.Errorf("%w: namespace %q was written by an older release with %d partitions tagged {p0}..{p%d} (layout 2); this release spreads partition tags over the slot space and keeps a run's metadata and results in its state hash (layout %d): finish its runs with the release that wrote them, or use another namespace",
				ErrLayout, d.K.Namespace(), d.K.partitions, d.K.partitions-1, LayoutVersion)
		}
		if got != want {
			return fmt.Errorf("%w: namespace %q has layout %q (version:partitions), this process uses %q", ErrLayout, d.K.Namespace(), got, want)
		}
		return nil
	}
	// Recorded just now: is the oldest indexed run one of layout 1 (an
	// older release, which wrote no record)? Its keys then have the run's
	// own hash tag.
	old, err := d.C.ZRange(ctx, d.K.Runs(), 0, 0).Result()
	if err != nil {
		return fmt.Errorf("check key layout: %w", err)
	}
	if len(old) == 1 {
		n, err := d.C.Exists(ctx, d.K.legacyRunKey(old[0], "log"), d.K.legacyRunKey(old[0], "state")).Result()
		if err != nil {
			return fmt.Errorf("check key layout: %w", err)
		}
		if n > 0 {
			_ = d.C.Del(ctx, d.K.Layout()).Err()
			return fmt.Errorf("%w: namespace %q holds runs of an older key layout (layout 1, e.g. run %s): finish them with the release that wrote them, or use another namespace",
				ErrLayout, d.K.Namespace(), old[0])
		}
	}
	return nil
}

// legacyRunKey is a run's key in layout 1 ("<ns>:{<run>}:<kind>"), only to
// recognise a namespace an older release wrote.
func (k Keys) legacyRunKey(run, kind string) string { return k.ns + ":{" + run + "}:" + kind }
