// Package ui is the web dashboard "graflow ui" serves: the runs of a
// namespace, one run's DAG with live task states, its timeline, a task's
// result, error and attempts, the workers, projectors and queues, and the
// dead letters with a requeue button.
//
// Everything it reads and writes goes through graflow.Client; the live
// page folds the run's log, streamed with Client.Follow, with
// projector.Apply (the projector's own pure fold) and sends what changed as
// server-sent events. Templates, script and style sheet are embedded
// (go:embed): the page needs no build step and no network beyond the
// server.
//
// Security model (docs/dashboard.md): the server has no authentication, so
// by default it listens on loopback only (CheckAddr), answers only requests
// whose Host is a loopback name (DNS rebinding), sets a strict
// Content-Security-Policy, and accepts its one state-changing request
// (requeue, a POST) only with a CSRF token bound to a cookie and from the
// same origin.
package ui
