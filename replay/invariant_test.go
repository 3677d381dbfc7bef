package replay_test

import (
	"strings"
	"testing"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/replay"
)

// A claim acknowledged to a worker and then lost with a failover (Redis
// replication is asynchronous) leaves a history in which that worker's
// result is rejected at an epoch the log never issued to it: above the
// log's epoch, or the log's epoch reissued to another worker. Fencing did
// its job and the task ran again; CheckInvariants used to call both a
// valid result refused (chaos seed 51 on a cluster, two failovers: g0-149
// rejected at epoch 1 before any claim, g0-150 rejected at epoch 1 under
// w3-0 while the log's epoch 1 was w0-0's). Without lost writes no such
// claim exists, so the strict check still reports them.
func TestARejectionOfAClaimNotInTheLogIsALostWriteOnlyWhereWritesCanBeLost(t *testing.T) {
	spec := []events.TaskSpec{{ID: "a", Handler: "echo"}, {ID: "b", Handler: "echo"}}
	h := (&hist{}).submit(spec...).dispatch("a", 1).dispatch("b", 1).
		reject("a", 1, 1, "w1", 0). // w1's claim of a at epoch 1 was lost
		claim("a", 1, 1, "w0").claim("b", 1, 1, "w0").
		reject("b", 1, 1, "w3", 1). // w3's claim of b at epoch 1 was lost; the log's epoch 1 is w0's
		succeed("a", 1, 1, "w0").succeed("b", 1, 1, "w0").end(events.RunSucceeded)

	lossy := replay.CheckInvariantsWith(h.evs, nil, replay.InvariantOptions{LostWrites: true})
	if !lossy.OK() || lossy.RejectedUnlogged != 2 {
		t.Errorf("with lost writes: problems %q, %d rejections of claims not in the log; want none and 2", lossy.Problems, lossy.RejectedUnlogged)
	}
	strict := replay.CheckInvariants(h.evs, nil)
	if strict.OK() || len(strict.Problems) != 2 || !strings.Contains(strict.Problems[0], "not in the log") {
		t.Errorf("without lost writes: problems %q; want the two rejections of claims not in the log", strict.Problems)
	}

	// The current claim's own result refused is a problem either way.
	bad := (&hist{}).submit(spec[0]).dispatch("a", 1).claim("a", 1, 1, "w0").
		reject("a", 1, 1, "w0", 1).claim("a", 1, 2, "w1").succeed("a", 1, 2, "w1").end(events.RunSucceeded)
	for _, opts := range []replay.InvariantOptions{{}, {LostWrites: true}} {
		v := replay.CheckInvariantsWith(bad.evs, nil, opts)
		if v.OK() || !strings.Contains(strings.Join(v.Problems, "\n"), "a valid result was refused") {
			t.Errorf("%+v: problems %q; want a valid result refused", opts, v.Problems)
		}
	}
}
