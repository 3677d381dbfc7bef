package metrics_test

import (
	"testing"

	"github.com/graflow-go/graflow/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }
