package replay

import (
	"context"
	"errors"
	"fmt"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

// This file is the one place package replay still touches Redis: the
// Client that internal/chaos constructs, kept only until chaos calls
// graflow.Client.Verify (not marked Deprecated so that the linter stays
// quiet until then). Delete it then; everything else reads through
// graflow.Client.

// Config configures a Client. New code uses graflow.Config.
type Config struct {
	// Redis is required.
	Redis redis.UniversalClient
	// Namespace is the key prefix (default "graflow").
	Namespace string
}

// Client verifies the runs of one namespace. New code uses
// graflow.Client, the one way in.
type Client struct {
	ns string
	db rdb.DB
}

// New returns a Client. New code uses graflow.NewClient.
func New(cfg Config) (*Client, error) {
	if cfg.Namespace == "" {
		cfg.Namespace = rdb.DefaultNamespace
	}
	if errs := rdb.CheckConnection("replay", cfg.Redis != nil, cfg.Namespace); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &Client{ns: cfg.Namespace, db: rdb.New(cfg.Redis, cfg.Namespace)}, nil
}

// Verify is graflow.Client.Verify (which new code calls).
func (c *Client) Verify(ctx context.Context, run string) (*Report, error) {
	live, err := c.db.ReadLive(ctx, run)
	if err != nil {
		return nil, err
	}
	if live.Last == "" && len(live.State) == 0 {
		return nil, fmt.Errorf("run not found: %s in namespace %q", run, c.ns)
	}
	var evs []events.Event
	var bad []rdb.BadEntry
	if live.Last != "" {
		if evs, bad, err = c.db.ReadLogTolerant(ctx, run, 5000); err != nil {
			return nil, err
		}
	}
	und := make([]Undecodable, len(bad))
	for i, b := range bad {
		und[i] = Undecodable(b)
	}
	rep, want := Verify(run, c.ns, Live{State: live.State, Results: live.Results, DAG: live.DAG,
		LastSeq: live.Last, Added: live.Added, Length: live.Length, MaxDeleted: live.MaxDeleted}, evs, und)
	ws := make([]rdb.Want, len(want))
	for i, w := range want {
		ws[i] = rdb.Want(w)
	}
	lost, err := c.db.Lost(ctx, run, ws)
	if err != nil {
		return nil, err
	}
	ls := make([]ExpectedDispatch, len(lost))
	for i, w := range lost {
		ls[i] = ExpectedDispatch(w)
	}
	rep.AddLost(ls, c.db.K.Queue)
	return rep, nil
}
