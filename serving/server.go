package serving

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/kafkaconn"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/schema"
)

// Options are the dependencies of a Server; every field is optional.
type Options struct {
	Logger *slog.Logger
	// Registry receives the server's metrics and is served at /metrics; one is created when nil.
	Registry *prometheus.Registry
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Conn is the ClickHouse connection; New opens one from the configuration when nil, and
	// Run closes only a connection New opened.
	Conn driver.Conn
	// Dashboards are static files served at / without authentication.
	Dashboards fs.FS
	// Health are checks of other layers in the same process (lambda dev): /healthz answers
	// 503 with every problem while one fails.
	Health []func() error
	// NoKafka: the speed watermark goes by the ledger's heartbeats alone, without asking Kafka
	// for the consumer group's offsets (a deployment whose API may not reach Kafka).
	NoKafka bool
}

// Server is the HTTP API.
type Server struct {
	cfg     *config.Config
	log     *slog.Logger
	reg     *prometheus.Registry
	now     func() time.Time
	conn    driver.Conn
	ownConn bool
	planner *Planner
	state   *stateCache
	cache   *resultCache
	sets    *setsCache
	engine  *gin.Engine
	dash    fs.FS
	keys    [][]byte
	health  []func() error
	m       *serverMetrics
}

type serverMetrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	cacheHits   prometheus.Counter
	cacheMisses prometheus.Counter
	rows        *prometheus.CounterVec
}

// New builds a server. It connects to ClickHouse when opts.Conn is nil (without creating
// anything: run migrate first).
func New(cfg *config.Config, opts Options) (*Server, error) {
	s := &Server{cfg: cfg, log: opts.Logger, reg: opts.Registry, now: opts.Now, conn: opts.Conn, dash: opts.Dashboards, health: opts.Health}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.conn == nil {
		ctx, cancel := context.WithTimeout(context.Background(), cfg.ClickHouse.DialTimeout.D()+5*time.Second)
		defer cancel()
		conn, err := chconn.Open(ctx, cfg.ClickHouse)
		if err != nil {
			return nil, err
		}
		s.conn, s.ownConn = conn, true
	}
	for _, k := range cfg.Serving.APIKeys {
		s.keys = append(s.keys, []byte(k))
	}
	s.planner = NewPlanner(cfg)
	s.state = &stateCache{conn: s.conn, cfg: cfg, g: s.planner.g, m: map[string]*snapshot{}, ttl: stateTTL, log: s.log}
	if len(cfg.Kafka.Brokers) > 0 && !opts.NoKafka {
		// Kafka's offsets are the evidence of what is consumed (rows from raw are exact only up
		// to the speed watermark); without them, the ledger's heartbeats.
		sc, err := kafkaconn.Config(cfg.Kafka, cfg.Kafka.ClientID+"-serve")
		if err != nil {
			return nil, err
		}
		sc.Net.DialTimeout, sc.Metadata.Retry.Max = time.Second, 0
		s.state.kafka = ledger.NewKafkaReader(cfg.Kafka.Brokers, sc)
	}
	s.cache = newResultCache(cfg.Serving.CacheEntries)
	s.sets = &setsCache{}
	s.m = &serverMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lambda_serving_requests_total",
			Help: "HTTP requests by route and status code."}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lambda_serving_request_duration_seconds",
			Help: "HTTP request latency by route.", Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"route"}),
		cacheHits:   prometheus.NewCounter(prometheus.CounterOpts{Name: "lambda_serving_cache_hits_total", Help: "Queries answered from the result cache."}),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts{Name: "lambda_serving_cache_misses_total", Help: "Cacheable queries (wholly from <ds>_daily) that ran in ClickHouse."}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lambda_serving_query_rows_total",
			Help: "Result rows by source."}, []string{"source"}),
	}
	for _, c := range []prometheus.Collector{s.m.requests, s.m.duration, s.m.cacheHits, s.m.cacheMisses, s.m.rows} {
		if err := s.reg.Register(c); err != nil {
			return nil, fmt.Errorf("cannot register serving metrics: %w", err)
		}
	}
	s.engine = s.routes()
	return s, nil
}

// Handler returns the HTTP handler of every route.
func (s *Server) Handler() http.Handler { return s.engine }

// Run listens on cfg.Serving.Listen until ctx is done, then shuts down gracefully (in-flight
// requests get 10 seconds). Without API keys it refuses to listen on anything but loopback.
func (s *Server) Run(ctx context.Context) error {
	if s.ownConn {
		defer s.conn.Close()
	}
	if s.state.kafka != nil {
		defer s.state.kafka.Close()
	}
	addr := s.cfg.Serving.Listen
	if len(s.keys) == 0 && !loopback(addr) {
		return fmt.Errorf("refusing to listen on %s without API keys: set serving.api_keys or LAMBDA_API_KEYS, or listen on 127.0.0.1", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: s.engine, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.log.Info("serving api", "addr", ln.Addr().String(), "auth", len(s.keys) > 0)
	select {
	case err := <-errc:
		return fmt.Errorf("cannot serve on %s: %w", addr, err)
	case <-ctx.Done():
	}
	start := time.Now()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("cannot shut down the api server: %w", err)
	}
	s.log.Info("api stopped", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// loopback reports whether a listen address binds only to a loopback interface.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *Server) routes() *gin.Engine {
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.HandleMethodNotAllowed = true
	// The access log comes first: it sees the final status of every request, a recovered
	// panic's 500 included, and gives the request its id before anything can log.
	e.Use(s.access, gin.CustomRecoveryWithWriter(io.Discard, s.recovered), s.observe, s.cors)
	e.GET("/healthz", func(c *gin.Context) {
		var problems []string
		for _, check := range s.health {
			if err := check(); err != nil {
				problems = append(problems, err.Error())
			}
		}
		if len(problems) > 0 {
			c.String(http.StatusServiceUnavailable, strings.Join(problems, "\n")+"\n")
			return
		}
		c.String(http.StatusOK, "ok\n")
	})
	e.GET("/readyz", s.readyz)
	mh := promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg})
	e.GET("/metrics", gin.WrapH(mh))
	api := e.Group("/api/v1", s.auth)
	api.GET("/datasets", s.datasets)
	api.GET("/query", s.query)
	api.POST("/query", s.query)
	api.GET("/freshness", s.freshness)
	api.GET("/openapi.json", s.openapi)
	api.GET("/values", s.values)
	e.NoRoute(s.static)
	e.NoMethod(func(c *gin.Context) {
		s.fail(c, &APIError{Status: http.StatusMethodNotAllowed, Code: CodeMethodNotAllowed, Message: c.Request.Method + " is not allowed on " + c.Request.URL.Path})
	})
	return e
}

// requestIDKey is the context key of the request id (see RequestID).
type requestIDKey struct{}

// RequestID returns the id the access log gives the request of ctx, "" outside a request.
func RequestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// validRequestID accepts a client's X-Request-Id when it is short printable ASCII without
// spaces, so that it cannot break a log line or a header.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// access gives the request an id (the client's X-Request-Id when valid, a new one otherwise),
// echoes it in the response header, puts it in the request's context for error logs, and
// writes one access log line per request: method, path, route, status, duration, bytes, id.
// Health checks and scrapes that succeed are logged at debug level, 5xx at error level.
func (s *Server) access(c *gin.Context) {
	start := time.Now()
	id := c.GetHeader("X-Request-Id")
	if !validRequestID(id) {
		id = newRequestID()
	}
	c.Header("X-Request-Id", id)
	c.Request = c.Request.WithContext(context.WithValue(c.Request.Context(), requestIDKey{}, id))
	c.Next()
	status := c.Writer.Status()
	level := slog.LevelInfo
	switch p := c.Request.URL.Path; {
	case status >= 500:
		level = slog.LevelError
	case status < 400 && (p == "/healthz" || p == "/readyz" || p == "/metrics"):
		level = slog.LevelDebug
	}
	s.log.LogAttrs(c.Request.Context(), level, "request",
		slog.String("method", c.Request.Method), slog.String("path", c.Request.URL.Path), slog.String("route", c.FullPath()),
		slog.Int("status", status), slog.Duration("duration", time.Since(start)), slog.Int("bytes", max(c.Writer.Size(), 0)),
		slog.String("request_id", id), slog.String("remote", c.ClientIP()))
}

// recovered answers 500 to a request whose handler panicked, logging the panic with the
// request id and the stack.
func (s *Server) recovered(c *gin.Context, err any) {
	s.log.Error("panic serving request", "request_id", RequestID(c.Request.Context()), "path", c.Request.URL.Path,
		"err", fmt.Sprint(err), "stack", string(debug.Stack()))
	s.fail(c, internalError(c.Request.Context(), "internal error"))
}

// observe counts requests and their latency per route.
func (s *Server) observe(c *gin.Context) {
	start := time.Now()
	c.Next()
	route := c.FullPath()
	if route == "" {
		route = "other"
	}
	s.m.requests.WithLabelValues(route, strconv.Itoa(c.Writer.Status())).Inc()
	s.m.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
}

// cors answers preflights and sets the CORS headers for configured origins ("*" allows any).
func (s *Server) cors(c *gin.Context) {
	origin := c.GetHeader("Origin")
	if origin == "" || len(s.cfg.Serving.CORSOrigins) == 0 {
		c.Next()
		return
	}
	allowed := slices.Contains(s.cfg.Serving.CORSOrigins, "*") || slices.Contains(s.cfg.Serving.CORSOrigins, origin)
	if allowed {
		h := c.Writer.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Add("Vary", "Origin")
		h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
		h.Set("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
		h.Set("Access-Control-Max-Age", "600")
		h.Set("Access-Control-Expose-Headers", "X-Request-Id, X-Lambda-Truncated, X-Lambda-Complete, X-Lambda-Exact, X-Lambda-Batch-Watermark")
	}
	if c.Request.Method == http.MethodOptions {
		c.AbortWithStatus(http.StatusNoContent)
		return
	}
	c.Next()
}

// auth checks the bearer key of /api/* when keys are configured. Every key is compared in
// constant time, and all of them, so that timing tells nothing about which one nearly matched.
func (s *Server) auth(c *gin.Context) {
	if len(s.keys) == 0 {
		c.Next()
		return
	}
	h := c.GetHeader("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		c.Header("WWW-Authenticate", `Bearer realm="lambda"`)
		s.fail(c, &APIError{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Field: "Authorization", Message: "missing bearer API key"})
		return
	}
	match := 0
	for _, k := range s.keys {
		match |= subtle.ConstantTimeCompare([]byte(tok), k)
	}
	if match != 1 {
		c.Header("WWW-Authenticate", `Bearer realm="lambda", error="invalid_token"`)
		s.fail(c, &APIError{Status: http.StatusUnauthorized, Code: CodeUnauthorized, Field: "Authorization", Message: "wrong API key"})
		return
	}
	c.Next()
}

func (s *Server) fail(c *gin.Context, e *APIError) {
	c.AbortWithStatusJSON(e.Status, e)
}

// internalError is the answer of a 500: what failed, and the request id under which the server
// log has the cause (never ClickHouse's text, which names tables, users and settings).
func internalError(ctx context.Context, msg string) *APIError {
	return &APIError{Status: http.StatusInternalServerError, Code: CodeInternal,
		Message: fmt.Sprintf("%s (the server log has the cause under request id %s)", msg, RequestID(ctx))}
}

func (s *Server) static(c *gin.Context) {
	if s.dash == nil || strings.HasPrefix(c.Request.URL.Path, "/api/") ||
		(c.Request.Method != http.MethodGet && c.Request.Method != http.MethodHead) {
		s.fail(c, &APIError{Status: http.StatusNotFound, Code: CodeNotFound, Message: "not found: " + c.Request.URL.Path})
		return
	}
	http.FileServer(http.FS(s.dash)).ServeHTTP(c.Writer, c.Request)
}

// readyz answers 200 when ClickHouse answers and every table and view of every dataset
// exists, 503 otherwise, naming the missing objects. The server starts without either (it
// never creates the schema: lambda migrate does), so this is what holds traffic back.
func (s *Server) readyz(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), 5*time.Second)
	defer cancel()
	missing, err := s.missingObjects(ctx)
	switch {
	case err != nil:
		c.JSON(http.StatusServiceUnavailable, gin.H{"ready": false, "error": "clickhouse: " + err.Error()})
	case len(missing) > 0:
		c.JSON(http.StatusServiceUnavailable, gin.H{"ready": false, "missing": missing,
			"error": fmt.Sprintf("schema: %d objects missing in %s (run lambda migrate): %s", len(missing), s.cfg.ClickHouse.Database, strings.Join(missing, ", "))})
	default:
		c.JSON(http.StatusOK, gin.H{"ready": true})
	}
}

// missingObjects returns the tables and views of the configuration the database lacks.
func (s *Server) missingObjects(ctx context.Context) ([]string, error) {
	var want []string
	for _, o := range s.planner.g.Objects(s.cfg) {
		if o.Kind != schema.Database {
			want = append(want, o.Name)
		}
	}
	rows, err := s.conn.Query(ctx, "SELECT name FROM system.tables WHERE database = ? AND has(?, name)", s.cfg.ClickHouse.Database, want)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	have := map[string]bool{}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, err
		}
		have[name] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	missing := []string{}
	for _, n := range want {
		if !have[n] {
			missing = append(missing, n)
		}
	}
	return missing, nil
}

// DatasetInfo describes a dataset in GET /api/v1/datasets.
type DatasetInfo struct {
	Name            string       `json:"name"`
	Dimensions      []string     `json:"dimensions"`
	SpeedDimensions []string     `json:"speed_dimensions"`
	Metrics         []MetricInfo `json:"metrics"`
	GroupingSets    []string     `json:"grouping_sets"`
	Granularities   []string     `json:"granularities"`
	// TimeZone is the zone of the dataset's days (time_zone): the default of a query's.
	TimeZone string `json:"time_zone"`
}

// MetricInfo describes a metric.
type MetricInfo struct {
	Name  string  `json:"name"`
	Type  string  `json:"type"`
	Field string  `json:"field,omitempty"`
	Level float64 `json:"level,omitempty"`
	// Numerator and Denominator are a ratio's parts.
	Numerator   string `json:"numerator,omitempty"`
	Denominator string `json:"denominator,omitempty"`
	// ExactRollup is false for distinct counts and quantiles (and ratios of them): their
	// roll-ups beyond the stored grouping sets are approximate unless the query asks for exact.
	ExactRollup bool `json:"exact_rollup"`
}

func (s *Server) datasets(c *gin.Context) {
	out := []DatasetInfo{}
	for i := range s.cfg.Datasets {
		d := &s.cfg.Datasets[i]
		info := DatasetInfo{Name: d.Name, Dimensions: d.DimensionNames(), SpeedDimensions: d.SpeedDimensions(), Granularities: Granularities,
			TimeZone: d.Location().String()}
		for _, set := range d.GroupingSets() {
			info.GroupingSets = append(info.GroupingSets, config.GroupingName(set))
		}
		rollup := func(name string) bool { sp, _ := d.Spec(name); return sp.ExactRollup() }
		for _, m := range d.Metrics {
			mi := MetricInfo{Name: m.Name, Type: m.Type, Field: m.Field, Level: m.Level, ExactRollup: rollup(m.Name)}
			if r, ok := d.RatioOf(m.Name); ok {
				mi.Numerator, mi.Denominator, mi.ExactRollup = r.Numerator, r.Denominator, rollup(r.Numerator) && rollup(r.Denominator)
			}
			info.Metrics = append(info.Metrics, mi)
		}
		out = append(out, info)
	}
	c.JSON(http.StatusOK, gin.H{"datasets": out})
}

// readBody reads at most max_body_bytes.
func (s *Server) readBody(c *gin.Context) ([]byte, *APIError) {
	limit := s.cfg.Serving.MaxBodyBytes
	if limit <= 0 {
		limit = 1 << 20
	}
	b, err := io.ReadAll(http.MaxBytesReader(c.Writer, c.Request.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, &APIError{Status: http.StatusRequestEntityTooLarge, Code: CodeBodyTooLarge, Field: "body", Message: fmt.Sprintf("request body larger than %d bytes", limit)}
		}
		return nil, badRequest(CodeMalformed, "body", "cannot read the request body: %v", err)
	}
	return b, nil
}
