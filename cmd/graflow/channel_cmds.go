package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"text/tabwriter"

	"github.com/graflow-go/graflow"
)

// printChannel prints run's channel ("graflow status --channel RUN"): a
// KEY/VALUE table sorted by key, or with --json one object of key → value.
func printChannel(ctx context.Context, m *Main, cl *graflow.Client, run string, asJSON bool) error {
	ch, err := cl.Channel(ctx, run)
	if errors.Is(err, graflow.ErrRunNotFound) {
		return withCode(ExitError, err)
	}
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(m.Stdout, ch)
	}
	if len(ch) == 0 {
		fmt.Fprintf(m.Stdout, "run %s: the channel is empty\n", run)
		return nil
	}
	keys := make([]string, 0, len(ch))
	for k := range ch {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tVALUE")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\n", k, ch[k])
	}
	return tw.Flush()
}
