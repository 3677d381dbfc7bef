package projector

import "context"

// ProjectBatch runs the batched pass over runs as handle does (sending its
// outbox acks) and returns the runs it leaves to Project.
func (p *Projector) ProjectBatch(ctx context.Context, runs []string) []string {
	rest, later := p.projectBatch(ctx, runs)
	_ = p.sendAcks(ctx, acks{outbox: later}, nil)
	return rest
}
