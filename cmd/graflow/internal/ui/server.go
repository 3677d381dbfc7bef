package ui

import (
	"bytes"
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/rs/zerolog"
)

// Defaults for a zero Config field.
const (
	// DefaultFollowBlock bounds one XREAD BLOCK of a live stream: how long
	// a stream may outlive its browser tab.
	DefaultFollowBlock = 2 * time.Second
	// DefaultMaxStreams bounds the live streams served at once. Each holds
	// a Redis connection while it blocks, so it stays well below go-redis'
	// pool (10 per CPU).
	DefaultMaxStreams = 16
	// DefaultPageSize is the number of runs per page of the runs list.
	DefaultPageSize = 50
	// DefaultShutdownTimeout bounds how long Serve waits for requests in
	// flight after its context is done.
	DefaultShutdownTimeout = 5 * time.Second
)

// Config configures a Server. A zero field means its default.
type Config struct {
	// Client is required: every read and the requeue go through it.
	Client *graflow.Client
	// AllowAnyHost serves requests whatever their Host header. By default
	// only loopback hosts (localhost, 127.0.0.0/8, [::1]) are served, so a
	// web page cannot reach the dashboard by rebinding its own DNS name to
	// 127.0.0.1. Set it when the server is reached under another name
	// (graflow ui --allow-remote).
	AllowAnyHost bool
	// FollowBlock is DefaultFollowBlock when zero.
	FollowBlock time.Duration
	// MaxStreams is DefaultMaxStreams when zero; beyond it a live stream
	// is refused with 503 and the page says so.
	MaxStreams int
	// PageSize is DefaultPageSize when zero.
	PageSize int
	// Logger; nil is quiet.
	Logger *zerolog.Logger
	// Now is the clock for ages on the pages (default time.Now).
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.FollowBlock <= 0 {
		c.FollowBlock = DefaultFollowBlock
	}
	if c.MaxStreams <= 0 {
		c.MaxStreams = DefaultMaxStreams
	}
	if c.PageSize <= 0 {
		c.PageSize = DefaultPageSize
	}
	if c.Logger == nil {
		nop := zerolog.Nop()
		c.Logger = &nop
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	if c.Client == nil {
		errs = append(errs, errors.New("ui: Config.Client is required"))
	}
	return errors.Join(errs...)
}

//go:embed templates/*.tmpl
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Server serves the dashboard. Safe for concurrent use.
type Server struct {
	cfg     Config
	pages   map[string]*template.Template
	handler http.Handler
	// streams holds a token per live stream being served.
	streams chan struct{}
	// csrfKey signs CSRF tokens; random per process, so a restart
	// invalidates the forms of pages loaded before it.
	csrfKey []byte
}

// New returns a Server, or an error if cfg lacks its Client.
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, streams: make(chan struct{}, cfg.MaxStreams), csrfKey: make([]byte, 32)}
	_, _ = rand.Read(s.csrfKey) // never fails (crypto/rand)
	pages, err := s.parsePages()
	if err != nil {
		return nil, fmt.Errorf("ui: templates: %w", err)
	}
	s.pages = pages
	s.handler = s.routes()
	return s, nil
}

// Handler returns the dashboard's handler, security checks included.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/runs", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /runs", s.handleRuns)
	mux.HandleFunc("GET /runs/{id}", s.handleRun)
	mux.HandleFunc("GET /runs/{id}/dag", s.handleDAG)
	mux.HandleFunc("GET /runs/{id}/events", s.handleStream)
	mux.HandleFunc("GET /runs/{id}/timeline", s.handleTimeline)
	mux.HandleFunc("GET /runs/{id}/tasks/{task}", s.handleTask)
	mux.HandleFunc("GET /workers", s.handleWorkers)
	mux.HandleFunc("GET /projectors", s.handleProjectors)
	mux.HandleFunc("GET /queues", s.handleQueues)
	mux.HandleFunc("GET /dead-letters", s.handleDeadLetters)
	mux.Handle("POST /dead-letters/requeue", s.requireCSRF(http.HandlerFunc(s.handleRequeue)))
	return s.secure(mux)
}

// Serve serves the dashboard on ln until ctx is done, then shuts down:
// live streams end (their requests' contexts derive from ctx), and
// requests in flight get DefaultShutdownTimeout. It returns nil after a
// clean shutdown and closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		// No WriteTimeout: a live stream writes for as long as its run runs.
		BaseContext: func(net.Listener) context.Context { return ctx },
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ui: serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DefaultShutdownTimeout)
	defer cancel()
	err := hs.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("ui: shut down: %w", err)
	}
	return nil
}

// render executes page's template with data into a buffer first, so a
// template error becomes a clean 500 rather than half a page.
func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, page string, data any) {
	var buf bytes.Buffer
	t := s.pages[page]
	if err := t.ExecuteTemplate(&buf, "layout", data); err != nil {
		s.cfg.Logger.Error().Err(err).Str("page", page).Msg("render")
		http.Error(w, "internal error rendering "+page, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = buf.WriteTo(w)
}

// errorPage is the data of the error page.
type errorPage struct {
	base
	Status  int
	Message string
}

// fail renders err as a page: 404 for a run that does not exist, 502 when
// Redis cannot be read.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the browser went away
	}
	status := http.StatusBadGateway
	if errors.Is(err, graflow.ErrRunNotFound) {
		status = http.StatusNotFound
	}
	s.cfg.Logger.Warn().Err(err).Str("path", r.URL.Path).Int("status", status).Msg("request failed")
	s.render(w, r, status, "error", errorPage{base: s.base("Error", ""), Status: status, Message: err.Error()})
}
