package serving

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/gin-gonic/gin"
	"github.com/shopspring/decimal"
)

// Meta says where the numbers came from and how fresh they are.
type Meta struct {
	// BatchWatermark is the last exact day the query used: the persisted watermark lowered
	// before days waiting for a recomputation. Null when no day is exact.
	BatchWatermark *string `json:"batch_watermark"`
	// PersistedBatchWatermark is the batch layer's own watermark.
	PersistedBatchWatermark *string    `json:"persisted_batch_watermark"`
	SpeedWatermark          *time.Time `json:"speed_watermark"`
	LagSeconds              float64    `json:"lag_seconds"`
	// Complete is false when part of the range has no source (see Sources).
	Complete bool          `json:"complete"`
	Sources  []SourceRange `json:"sources"`
	// PendingCorrections are the days waiting for a batch run: dirty days (late events
	// arrived after their run) and days with raw rows and no run yet.
	PendingCorrections []string `json:"pending_corrections"`
	// Truncated is true when more rows follow the page (offset + limit): raise the limit,
	// page on with offset, or narrow the request.
	Truncated bool `json:"truncated"`
	// Columns are the rows' columns in order, with their types.
	Columns []Column `json:"columns"`
	Cached  bool     `json:"cached"`
	TookMs  float64  `json:"took_ms"`
}

// Column is a result column: its name and type (timestamp, string, integer, number or
// boolean); nullable columns hold null where no value exists.
type Column struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	Nullable bool   `json:"nullable"`
}

// Column types of meta.columns.
const (
	TypeTimestamp = "timestamp" // RFC 3339, UTC
	TypeString    = "string"
	TypeInteger   = "integer" // unsigned, fits 64 bits
	TypeNumber    = "number"  // a float64
	TypeDecimal   = "decimal" // a JSON number written exactly (a sum with decimals: money)
	TypeBoolean   = "boolean"
)

// Response is the answer of /api/v1/query.
type Response struct {
	Rows *Result `json:"rows"`
	Meta Meta    `json:"meta"`
}

func day(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.Format("2006-01-02")
	return &s
}

func (s *Server) query(c *gin.Context) {
	start := time.Now()
	var req *Request
	var apiErr *APIError
	if c.Request.Method == http.MethodPost {
		body, e := s.readBody(c)
		if e != nil {
			s.fail(c, e)
			return
		}
		req, apiErr = DecodeRequest(body)
	} else {
		req, apiErr = RequestFromValues(c.Request.URL.Query())
	}
	if apiErr != nil {
		s.fail(c, apiErr)
		return
	}
	format := c.Query("format")
	if format != "" && format != "json" && format != "csv" {
		s.fail(c, badRequest(CodeUnknownFormat, "format", "unknown format %q (want json or csv)", format))
		return
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), s.cfg.Serving.QueryTimeout.D())
	defer cancel()
	resp, apiErr := s.Query(ctx, req)
	if apiErr != nil {
		s.fail(c, apiErr)
		return
	}
	resp.Meta.TookMs = float64(time.Since(start).Microseconds()) / 1000
	if format == "csv" {
		writeCSV(c, resp)
		return
	}
	body, err := resp.encodeJSON()
	if err != nil {
		s.log.Error("encode the result", "request_id", RequestID(c.Request.Context()), "err", err)
		s.fail(c, internalError(c.Request.Context(), "cannot encode the result"))
		return
	}
	c.Data(http.StatusOK, "application/json; charset=utf-8", body)
}

// Query answers a request. Cancelling ctx cancels the ClickHouse queries; a deadline becomes
// ClickHouse's max_execution_time and a 504.
//
// The parts before the batch boundary and after it are computed apart when no bucket
// straddles the boundary (minute, hour and day buckets): the batch side is cached, keyed by
// the runs it read, so a dashboard refresh costs only the part after the boundary. (A miss
// runs the two sides as one statement and parts the rows by bucket.)
func (s *Server) Query(ctx context.Context, req *Request) (*Response, *APIError) {
	now := s.now().UTC()
	q, apiErr := Check(s.cfg, req, Limits{MaxRows: s.cfg.Serving.MaxRows, MaxBuckets: s.cfg.Serving.MaxBuckets}, now)
	if apiErr != nil {
		return nil, apiErr
	}
	return s.answer(ctx, q, now)
}

// answer plans and runs a checked query.
func (s *Server) answer(ctx context.Context, q *Query, now time.Time) (*Response, *APIError) {
	st, err := s.state.get(ctx, q.DS, now)
	if err != nil {
		return nil, s.dbError(ctx, "cannot read the watermarks", err)
	}
	rs := st.State
	consistent := true
	if from, to := s.planner.BatchDays(q, &rs); from.Before(to) {
		rs.Sets, consistent, err = s.sets.get(ctx, s.conn, s.planner.g, q.DS.Name, from, to, st.Runs)
		if err != nil {
			return nil, s.dbError(ctx, "cannot read the grouping sets", err)
		}
	}
	pl, apiErr := s.planner.Plan(q, &rs, now)
	if apiErr != nil {
		return nil, apiErr
	}
	resp := &Response{Meta: Meta{
		BatchWatermark: day(st.Effective), PersistedBatchWatermark: day(st.Watermark),
		Complete: pl.Complete, Sources: pl.Sources, PendingCorrections: st.pending(), Columns: q.columnTypes(),
	}}
	if !st.SpeedWatermark.IsZero() {
		w := st.SpeedWatermark
		resp.Meta.SpeedWatermark = &w
		resp.Meta.LagSeconds = max(0, now.Sub(w).Seconds())
	}
	var parts []*Result
	var batch *Result
	key, cached := "", false
	if pl.Batch != nil {
		if consistent {
			key = s.cacheKey(q, st, pl)
		}
		batch, cached = s.cache.get(key)
		switch {
		case key == "":
		case cached:
			s.m.cacheHits.Inc()
			resp.Meta.Cached = true
		default:
			s.m.cacheMisses.Inc()
		}
	}
	switch {
	case pl.Batch != nil && !cached && pl.Speed != nil:
		// The two sides as one statement (Plan.Both), parted by bucket. On ClickHouse 18.16 two
		// statements side by side took longer than one that holds both (a 7-day hour panel 10.2
		// ms against 6.7).
		both, err := s.run(ctx, q, pl.Both())
		if err != nil {
			return nil, s.dbError(ctx, "cannot run the query", err)
		}
		batch, speed := splitAt(q, both, pl.Boundary)
		if key != "" {
			s.cache.put(key, batch)
		}
		parts = append(parts, batch, speed)
	default:
		// One statement, or a cached batch side and the speed side.
		if pl.Batch != nil {
			if !cached {
				var err error
				if batch, err = s.run(ctx, q, pl.Batch); err != nil {
					return nil, s.dbError(ctx, "cannot run the query", err)
				}
				if key != "" {
					s.cache.put(key, batch)
				}
			}
			parts = append(parts, batch)
		}
		for _, sql := range []*SQL{pl.Speed, pl.All} {
			if sql == nil {
				continue
			}
			r, err := s.run(ctx, q, sql)
			if err != nil {
				return nil, s.dbError(ctx, "cannot run the query", err)
			}
			parts = append(parts, r)
		}
	}
	res := mergeResults(q, parts)
	res = flagPartial(q, pl.Sources, res)
	// The page: each statement returned up to offset+limit+1 rows in the query's order, and
	// the merge kept as many, so the rows before offset and one after the page are known.
	rows := res.Rows[min(q.Offset, len(res.Rows)):]
	if len(rows) > q.Limit {
		resp.Meta.Truncated = true
		rows = rows[:q.Limit]
	}
	resp.Rows = &Result{Columns: res.Columns, Rows: rows}
	return resp, nil
}

// flagPartial marks approximate every row whose bucket an approximate part (or a range no
// source covers) overlaps, even when that part gave the row nothing: a bucket is exact only
// where every source of every instant of it is. (Rows are copied before they change: results
// are shared with the cache.)
func flagPartial(q *Query, sources []SourceRange, res *Result) *Result {
	var inexact []SourceRange
	for _, s := range sources {
		if !s.Exact {
			inexact = append(inexact, s)
		}
	}
	if len(inexact) == 0 || len(res.Rows) == 0 {
		return res
	}
	ex := len(res.Columns) - 1
	out := &Result{Columns: res.Columns, Rows: make([][]any, len(res.Rows))}
	for i, row := range res.Rows {
		out.Rows[i] = row
		if row[ex] != true {
			continue
		}
		from := row[0].(time.Time)
		to := q.bucketEnd(from)
		for _, s := range inexact {
			if s.From.Before(to) && from.Before(s.To) {
				r := slices.Clone(row)
				r[ex] = false
				out.Rows[i] = r
				break
			}
		}
	}
	return out
}

// columns are the columns of a query's result rows.
func (q *Query) columns() []string {
	cols := append([]string{"time"}, q.Dimensions...)
	cols = append(cols, q.Metrics...)
	return append(cols, "source", "exact")
}

// columnTypes are the columns with their types, for meta.columns.
func (q *Query) columnTypes() []Column {
	out := []Column{{Name: "time", Type: TypeTimestamp}}
	for _, d := range q.Dimensions {
		out = append(out, Column{Name: d, Type: TypeString})
	}
	for _, m := range q.Metrics {
		sp, ok := q.spec(m)
		switch {
		case ok && sp.ValueType() == "UInt64":
			out = append(out, Column{Name: m, Type: TypeInteger})
		case ok && sp.Decimals > 0:
			out = append(out, Column{Name: m, Type: TypeDecimal, Nullable: true})
		default:
			out = append(out, Column{Name: m, Type: TypeNumber, Nullable: true})
		}
	}
	return append(out, Column{Name: "source", Type: TypeString}, Column{Name: "exact", Type: TypeBoolean})
}

// mergeResults combines the results of the two sides of a split plan (whose buckets differ) in
// the query's order, at most Offset+Limit+1 rows (each side was cut there already). A single
// result is returned as it is; none gives an empty one.
func mergeResults(q *Query, parts []*Result) *Result {
	switch len(parts) {
	case 0:
		return &Result{Columns: q.columns(), Rows: [][]any{}}
	case 1:
		return parts[0]
	}
	out := &Result{Columns: q.columns()}
	for _, p := range parts {
		out.Rows = append(out.Rows, p.Rows...)
	}
	q.sortRows(out)
	return out
}

// splitAt parts the rows of a split plan's two sides run as one statement: the rows of buckets
// before the boundary are the batch side's. Each side is in the query's order and cut as its
// own statement would be (the statement cut every branch, not the whole).
func splitAt(q *Query, r *Result, boundary time.Time) (batch, speed *Result) {
	batch, speed = &Result{Columns: r.Columns, Rows: [][]any{}}, &Result{Columns: r.Columns, Rows: [][]any{}}
	for _, row := range r.Rows {
		if row[0].(time.Time).Before(boundary) {
			batch.Rows = append(batch.Rows, row)
		} else {
			speed.Rows = append(speed.Rows, row)
		}
	}
	q.sortRows(batch)
	q.sortRows(speed)
	return batch, speed
}

// sortRows puts rows in the query's order and cuts them to Offset+Limit+1.
func (q *Query) sortRows(r *Result) {
	key := slices.Index(r.Columns, q.OrderBy)
	slices.SortStableFunc(r.Rows, func(a, b []any) int { return q.compareRows(key, a, b) })
	if n := q.Offset + q.Limit + 1; len(r.Rows) > n {
		r.Rows = r.Rows[:n]
	}
}

// compareRows orders result rows as the outer query's ORDER BY does: the order column (NULLs
// last in either direction), then time (descending when ordered by time descending), then the
// dimensions.
func (q *Query) compareRows(key int, a, b []any) int {
	if q.OrderBy != "time" {
		if c := compareValues(a[key], b[key], q.Desc); c != 0 {
			return c
		}
	}
	c := a[0].(time.Time).Compare(b[0].(time.Time))
	if q.OrderBy == "time" && q.Desc {
		c = -c
	}
	if c != 0 {
		return c
	}
	for i, d := range q.Dimensions {
		if d == q.OrderBy {
			continue
		}
		if c := strings.Compare(a[1+i].(string), b[1+i].(string)); c != 0 {
			return c
		}
	}
	return 0
}

// compareValues compares two values of one result column; nil (NULL) sorts last whatever desc.
func compareValues(a, b any, desc bool) int {
	switch {
	case a == nil && b == nil:
		return 0
	case a == nil:
		return 1
	case b == nil:
		return -1
	}
	var c int
	switch x := a.(type) {
	case uint64:
		c = cmp.Compare(x, b.(uint64))
	case jsonFloat:
		c = cmp.Compare(x, b.(jsonFloat))
	case decimal.Decimal:
		c = x.Cmp(b.(decimal.Decimal))
	case string:
		c = strings.Compare(x, b.(string))
	}
	if desc {
		c = -c
	}
	return c
}

// dbError is the answer to a failed ClickHouse call: 504 when the query's time ran out, 503
// when ClickHouse cannot be reached (a client may retry), 500 otherwise. Only what failed is
// said; the cause goes to the log with the request id.
func (s *Server) dbError(ctx context.Context, msg string, err error) *APIError {
	var ex *clickhouse.Exception
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil || (errors.As(err, &ex) && ex.Code == 159) {
		return &APIError{Status: http.StatusGatewayTimeout, Code: CodeTimeout, Message: fmt.Sprintf("query timed out after %s (serving.query_timeout)", s.cfg.Serving.QueryTimeout.D())}
	}
	s.log.Error(strings.TrimPrefix(msg, "cannot "), "request_id", RequestID(ctx), "err", err)
	var netErr net.Error
	if ex == nil && (errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, clickhouse.ErrAcquireConnTimeout) || errors.Is(err, clickhouse.ErrConnectionClosed)) {
		return &APIError{Status: http.StatusServiceUnavailable, Code: CodeUnavailable,
			Message: fmt.Sprintf("%s: ClickHouse cannot be reached (request id %s); retry later", msg, RequestID(ctx))}
	}
	return internalError(ctx, msg)
}

// run executes one statement of a plan and reads its rows.
func (s *Server) run(ctx context.Context, q *Query, sql *SQL) (*Result, error) {
	res := &Result{Columns: q.columns(), Rows: [][]any{}}
	rows, err := s.conn.Query(ctx, sql.Text, sql.Args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	// Counts and distinct counts are UInt64, decimal sums Nullable(Decimal), every other metric
	// and every ratio Nullable(Float64).
	kind := make([]string, len(q.Metrics))
	for i, m := range q.Metrics {
		sp, ok := q.spec(m)
		switch {
		case ok && sp.ValueType() == "UInt64":
			kind[i] = TypeInteger
		case ok && sp.Decimals > 0:
			kind[i] = TypeDecimal
		default:
			kind[i] = TypeNumber
		}
	}
	for rows.Next() {
		var t time.Time
		dims := make([]string, len(q.Dimensions))
		vals := make([]any, len(q.Metrics))
		dest := []any{&t}
		for i := range dims {
			dest = append(dest, &dims[i])
		}
		for i := range q.Metrics {
			switch kind[i] {
			case TypeInteger:
				vals[i] = new(uint64)
			case TypeDecimal:
				vals[i] = new(*decimal.Decimal)
			default:
				vals[i] = new(*float64)
			}
			dest = append(dest, vals[i])
		}
		var src string
		var exact uint8
		dest = append(dest, &src, &exact)
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		row := make([]any, 0, len(res.Columns))
		row = append(row, t.UTC())
		for _, d := range dims {
			row = append(row, d)
		}
		for _, v := range vals {
			switch v := v.(type) {
			case *uint64:
				row = append(row, *v)
			case **float64:
				if *v == nil {
					row = append(row, nil)
				} else {
					row = append(row, jsonFloat(**v))
				}
			case **decimal.Decimal:
				if *v == nil {
					row = append(row, nil)
				} else {
					row = append(row, **v)
				}
			}
		}
		row = append(row, src, exact == 1)
		res.Rows = append(res.Rows, row)
		s.m.rows.WithLabelValues(src).Inc()
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if sql.Unsorted {
		q.sortRows(res)
	}
	return res, nil
}
