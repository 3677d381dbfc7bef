package projector

import (
	"context"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
)

// Observer is told what a projector does, at the points where it already
// knows it: a commit round trip, a loop going round. graflow.NewMetrics
// returns one that feeds Prometheus collectors; Config.Metrics nil
// observes nothing.
//
// Methods are called from many goroutines at once and must not block.
// Methods may be added: embed NopObserver to keep compiling.
type Observer interface {
	// Committed is called after a round trip of commits (one run's, or a
	// batch's pipeline) took d: of them, conflicts lost their
	// compare-and-set and failed returned an error (err is set when the
	// whole round trip failed).
	Committed(commits, conflicts, failed int, d time.Duration, err error)
	// Alive is called by a loop each time round; it promises to call
	// again within the given time (readiness turns false past it).
	Alive(loop string, within time.Duration)
}

// NopObserver observes nothing; embed it in an Observer to implement only
// some methods.
type NopObserver struct{}

func (NopObserver) Committed(int, int, int, time.Duration, error) {}
func (NopObserver) Alive(string, time.Duration)                   {}

func (p *Projector) obs() Observer {
	if p.cfg.Metrics == nil {
		return NopObserver{}
	}
	return p.cfg.Metrics
}

// maxCommitBatch bounds the commits of concurrent Project calls sent in
// one pipeline.
const maxCommitBatch = 128

type commitReq struct {
	run string
	c   rdb.Commit
}

type commitResp struct {
	res rdb.CommitResult
	err error
}

// commit commits one run's decisions, in one pipeline with those of the
// Project calls committing at the same moment (group commit).
func (p *Projector) commit(ctx context.Context, run string, c rdb.Commit) (rdb.CommitResult, error) {
	r, err := p.commitGroup.Do(ctx, commitReq{run: run, c: c})
	if err != nil {
		return rdb.CommitResult{}, err
	}
	return r.res, r.err
}

// flushCommits sends a group of commits (commits, observed).
func (p *Projector) flushCommits(ctx context.Context, reqs []commitReq) []commitResp {
	runs, cs := make([]string, len(reqs)), make([]rdb.Commit, len(reqs))
	for i, r := range reqs {
		runs[i], cs[i] = r.run, r.c
	}
	results, errs, err := p.commits(ctx, runs, cs)
	out := make([]commitResp, len(reqs))
	for i := range out {
		if err != nil && results == nil {
			out[i].err = err
			continue
		}
		out[i] = commitResp{res: results[i], err: errs[i]}
	}
	return out
}

// commits is rdb's Commits, observed.
func (p *Projector) commits(ctx context.Context, runs []string, cs []rdb.Commit) ([]rdb.CommitResult, []error, error) {
	began := time.Now()
	results, errs, err := p.db.Commits(ctx, runs, cs)
	conflicts, failed := 0, 0
	if err != nil {
		failed = len(runs)
	}
	for i := range errs {
		switch {
		case err != nil:
		case errs[i] != nil:
			failed++
		case results[i].Conflict:
			conflicts++
		}
	}
	p.obs().Committed(len(runs), conflicts, failed, time.Since(began), err)
	return results, errs, err
}

// feedLoopWithin is how soon a feed loop promises to go round again: a
// blocking read, or the projection of one batch of runs.
func (p *Projector) feedLoopWithin() time.Duration { return p.cfg.FeedBlock + p.cfg.FeedReclaimIdle }
