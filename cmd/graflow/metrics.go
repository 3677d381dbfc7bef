package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"net"
	"net/http"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/rs/zerolog"
)

// metricsFlag binds --metrics-addr.
func metricsFlag(fs *pflag.FlagSet) *string {
	return fs.String("metrics-addr", "", "serve Prometheus /metrics, /healthz and /readyz on this address (127.0.0.1:9090; :0 picks a port); off when empty")
}

// metricsServer is the HTTP server of --metrics-addr; the zero value (no
// address) serves nothing and observes nothing.
type metricsServer struct {
	m    *graflow.Metrics
	srv  *http.Server
	done chan struct{}
}

// startMetrics serves the collectors of the namespace cfg names on addr
// (nothing when addr is empty) and logs the address it bound. pools are
// the pools whose queues are reported (nil: all of them).
func startMetrics(cfg graflow.Config, addr string, pools []string, log *zerolog.Logger) (*metricsServer, error) {
	if addr == "" {
		return &metricsServer{}, nil
	}
	cl, err := graflow.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, withCode(ExitUsage, fmt.Errorf("--metrics-addr %s: %w (pick a free port, or 127.0.0.1:0)", addr, err))
	}
	s := &metricsServer{m: graflow.NewMetrics(cl, graflow.MetricsOptions{Pools: pools}), done: make(chan struct{})}
	s.srv = &http.Server{Handler: s.m.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("metrics server")
		}
	}()
	log.Info().Str("metrics_addr", ln.Addr().String()).Msg("serving /metrics, /healthz and /readyz on http://" + ln.Addr().String())
	return s, nil
}

// stop shuts the server down (a scrape in progress gets 5 s) and waits
// for it.
func (s *metricsServer) stop() {
	if s.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.srv.Shutdown(ctx)
	<-s.done
}

// worker is the observer for worker.Config.Metrics (nil when off).
func (s *metricsServer) worker() worker.Observer {
	if s.m == nil {
		return nil
	}
	return s.m.Worker()
}

// projector is the observer for projector.Config.Metrics (nil when off).
func (s *metricsServer) projector() projector.Observer {
	if s.m == nil {
		return nil
	}
	return s.m.Projector()
}
