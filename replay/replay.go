// Package replay rebuilds runs from their logs and audits them.
//
// Everything here starts from a run's log (graflow:{<run>}:log), the source
// of truth, and folds it from the first event with projector.Apply: the very
// fold the live projector uses, never a copy of it. On top of the fold:
//
//   - Analyze and Client.Timeline: who ran what, when, for how long, with
//     retries, reclaims, rejected results and why each task became ready;
//   - Client.Verify: the fold compared field by field with the live
//     projection in Redis, plus the history invariants (no lost task, at
//     most one accepted result per attempt, monotonic epochs, every unlock
//     justified, run_succeeded only after every task succeeded);
//   - Client.Export / Client.Import / Client.Resume: a run as JSON lines,
//     rebuilt elsewhere with identical state, and an unfinished imported run
//     put back to work;
//   - Client.Runs, Workers, Queues, Events and Follow: read-only inspection
//     of a namespace, mirroring the CLI's "graflow runs|workers|queues|events".
//
// The analysis functions (Analyze, ReadExport) are pure; Client methods do
// I/O and take a context first. A Client is safe for concurrent use.
package replay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/redis/go-redis/v9"
)

// Errors. Use errors.Is.
var (
	// ErrRunNotFound: the namespace holds no log and no state for the run.
	ErrRunNotFound = errors.New("replay: run not found")
	// ErrRunExists: Import would overwrite a run that already exists.
	ErrRunExists = errors.New("replay: run already exists")
	// ErrInvalidExport: an export file that cannot be imported (a line
	// that does not decode, events of several runs, a log that does not
	// fold). Nothing was written.
	ErrInvalidExport = errors.New("replay: invalid export")
	// ErrVerifyFailed: Verify found the live state or the history
	// inconsistent with the log (see *VerifyError for the problems).
	ErrVerifyFailed = errors.New("replay: verification failed")
	// ErrConcurrentChange: the run changed under an operation that needs
	// it still (an import racing another import, a resume racing workers
	// for longer than its retries).
	ErrConcurrentChange = errors.New("replay: run changed concurrently")
)

// DefaultReadCount is the number of log entries read per round trip.
const DefaultReadCount = 5000

// Config configures a Client. A zero field means its default.
type Config struct {
	// Redis is required.
	Redis redis.UniversalClient
	// Namespace is the key prefix (default "graflow").
	Namespace string
	// ReadCount bounds the log entries read per round trip (default 5000).
	ReadCount int
	// ID names this process in the events it writes (Resume's
	// task_reclaimed). Default "replay-<host>-<pid>".
	ID string
	// Now is the clock (default time.Now); it dates the events Resume
	// writes and the ages Workers and Queues report.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Namespace == "" {
		c.Namespace = rdb.DefaultNamespace
	}
	if c.ReadCount <= 0 {
		c.ReadCount = DefaultReadCount
	}
	if c.ID == "" {
		host, _ := os.Hostname()
		c.ID = "replay-" + host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validate() error {
	errs := rdb.CheckConnection("replay", c.Redis != nil, c.Namespace)
	return errors.Join(errs...)
}

// Client reads, audits, exports and imports the runs of one namespace.
// Safe for concurrent use.
type Client struct {
	cfg Config
	db  rdb.DB
}

// New returns a Client.
func New(cfg Config) (*Client, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Client{cfg: cfg, db: rdb.New(cfg.Redis, cfg.Namespace)}, nil
}

// Namespace returns the key prefix the client works in.
func (c *Client) Namespace() string { return c.cfg.Namespace }

// Log reads run's whole log and decodes it (older schema versions are
// upcast, see events.Upcast). It returns ErrRunNotFound for an empty log and
// an *events.DecodeError for an entry that does not decode.
func (c *Client) Log(ctx context.Context, run string) ([]events.Event, error) {
	evs, err := c.readLog(ctx, run, "-", "+")
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		return nil, fmt.Errorf("%w: %s in namespace %q", ErrRunNotFound, run, c.cfg.Namespace)
	}
	return evs, nil
}

// readLog reads and decodes the entries of run's log between start and end
// (XRANGE bounds), in chunks of ReadCount.
func (c *Client) readLog(ctx context.Context, run, start, end string) ([]events.Event, error) {
	return c.db.ReadLog(ctx, run, start, end, c.cfg.ReadCount, 0)
}

// Fold reads run's log and folds it from the first event with
// projector.Apply, the projector's own fold.
func (c *Client) Fold(ctx context.Context, run string) (*projector.Run, error) {
	evs, err := c.Log(ctx, run)
	if err != nil {
		return nil, err
	}
	r := projector.NewRun(run)
	for _, e := range evs {
		if err := projector.Apply(r, e); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Timeline reads run's log, replays it and returns its timeline.
func (c *Client) Timeline(ctx context.Context, run string) (*Timeline, error) {
	evs, err := c.Log(ctx, run)
	if err != nil {
		return nil, err
	}
	a, err := Analyze(run, evs)
	if err != nil {
		return nil, err
	}
	return a.Timeline, nil
}

// RunIDs lists the runs of the namespace's run index, oldest first.
func (c *Client) RunIDs(ctx context.Context) ([]string, error) {
	ids, err := c.cfg.Redis.ZRange(ctx, c.db.K.Runs(), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read run index: %w", err)
	}
	return ids, nil
}
