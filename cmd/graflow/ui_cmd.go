package main

import (
	"context"
	"fmt"
	"github.com/spf13/pflag"
	"net"

	"github.com/graflow-go/graflow/cmd/graflow/internal/ui"
)

func init() {
	register(&command{name: "ui", summary: "serve the web dashboard on --addr (127.0.0.1:8080): runs, live DAGs, timelines, workers, queues, dead letters", setup: runUI})
}

func runUI(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	addr := fs.String("addr", "127.0.0.1:8080", "listen address, host:port; a loopback host unless --allow-remote")
	allowRemote := fs.Bool("allow-remote", false, "serve on a non-loopback --addr and answer any Host name: the dashboard has no authentication, so anyone who reaches it can see every run and requeue dead letters")
	return func(ctx context.Context, args []string) error {
		pos := args
		if len(pos) != 0 {
			return usagef("ui takes no arguments")
		}
		if err := ui.CheckAddr(*addr, *allowRemote); err != nil {
			return withCode(ExitUsage, err)
		}
		rc, done, err := c.openClient(ctx)
		if err != nil {
			return err
		}
		defer done()
		srv, err := ui.New(ui.Config{Client: rc, AllowAnyHost: *allowRemote, Logger: c.logger(m.Stderr)})
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", *addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w (another graflow ui? pick a free port with --addr)", *addr, err)
		}
		fmt.Fprintf(m.Stdout, "graflow ui: namespace %q on http://%s/ (Ctrl-C stops)\n", rc.Namespace(), ln.Addr())
		return srv.Serve(ctx, ln)
	}
}
