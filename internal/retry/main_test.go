package retry_test

import (
	"testing"

	"github.com/graflow-go/graflow/internal/redistest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Wrap(m)) }
