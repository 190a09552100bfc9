package serving

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/gin-gonic/gin"
)

// Result is the rows of a query: one object per row with the columns in order.
type Result struct {
	Columns []string
	Rows    [][]any
}

// MarshalJSON writes the rows as objects whose keys keep the column order.
func (r *Result) MarshalJSON() ([]byte, error) { return r.appendJSON(nil) }

// appendJSON appends the rows as a JSON array. Keys are encoded once, and the common value
// types without reflection: encoding rows was half the API's CPU time (bench/servingload
// -cpuprofile).
func (r *Result) appendJSON(b []byte) ([]byte, error) {
	keys := make([][]byte, len(r.Columns))
	for j, c := range r.Columns {
		keys[j] = append(appendJSONString(nil, c), ':')
	}
	b = append(b, '[')
	var err error
	for i, row := range r.Rows {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '{')
		for j, v := range row {
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, keys[j]...)
			if b, err = appendJSONValue(b, v); err != nil {
				return nil, err
			}
		}
		b = append(b, '}')
	}
	return append(b, ']'), nil
}

// encodeJSON is the response body: what encoding/json would write for resp, without its
// second pass over the rows a json.Marshaler returns.
func (resp *Response) encodeJSON() ([]byte, error) {
	b := make([]byte, 0, 256+64*len(resp.rows()))
	b = append(b, `{"rows":`...)
	var err error
	if resp.Rows == nil {
		b = append(b, "null"...)
	} else if b, err = resp.Rows.appendJSON(b); err != nil {
		return nil, err
	}
	meta, err := json.Marshal(resp.Meta)
	if err != nil {
		return nil, err
	}
	b = append(b, `,"meta":`...)
	b = append(b, meta...)
	return append(b, '}'), nil
}

func (resp *Response) rows() [][]any {
	if resp.Rows == nil {
		return nil
	}
	return resp.Rows.Rows
}

// appendJSONValue encodes one value as encoding/json does.
func appendJSONValue(b []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendJSONString(b, x), nil
	case jsonFloat:
		f := float64(x)
		if f != f || math.IsInf(f, 0) {
			return append(b, "null"...), nil
		}
		return strconv.AppendFloat(b, f, 'g', -1, 64), nil
	case bool:
		return strconv.AppendBool(b, x), nil
	case time.Time:
		if y := x.Year(); y < 0 || y > 9999 {
			break
		}
		b = append(b, '"')
		b = x.AppendFormat(b, time.RFC3339Nano)
		return append(b, '"'), nil
	case uint64:
		return strconv.AppendUint(b, x, 10), nil
	case int64:
		return strconv.AppendInt(b, x, 10), nil
	case uint8:
		return strconv.AppendUint(b, uint64(x), 10), nil
	case int:
		return strconv.AppendInt(b, int64(x), 10), nil
	}
	enc, err := json.Marshal(v)
	return append(b, enc...), err
}

// appendJSONString appends s quoted; strings with anything encoding/json escapes (quotes,
// backslashes, control characters, <, >, &, non-ASCII) go through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			enc, _ := json.Marshal(s)
			return append(b, enc...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

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
	// PendingCorrections are dirty days: late events arrived after their batch run.
	PendingCorrections []string `json:"pending_corrections"`
	Truncated          bool     `json:"truncated"`
	Cached             bool     `json:"cached"`
	TookMs             float64  `json:"took_ms"`
}

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
		s.fail(c, badRequest("format", "unknown format %q (want json or csv)", format))
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
		s.fail(c, &APIError{Status: http.StatusInternalServerError, Message: "cannot encode the result: " + err.Error()})
		return
	}
	c.Data(http.StatusOK, "application/json; charset=utf-8", body)
}

// Query answers a request. Cancelling ctx cancels the ClickHouse query; its deadline becomes
// ClickHouse's max_execution_time and a 504.
func (s *Server) Query(ctx context.Context, req *Request) (*Response, *APIError) {
	now := s.now().UTC()
	q, apiErr := Check(s.cfg, req, Limits{MaxRows: s.cfg.Serving.MaxRows, MaxBuckets: s.cfg.Serving.MaxBuckets}, now)
	if apiErr != nil {
		return nil, apiErr
	}
	st, err := s.state.get(ctx, q.DS, now)
	if err != nil {
		return nil, s.dbError(ctx, "cannot read the watermarks", err)
	}
	rs := st.State
	consistent := true
	if from, to := s.planner.DailyDays(q, &rs); from.Before(to) {
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
		Complete: pl.Complete, Sources: pl.Sources, PendingCorrections: []string{},
	}}
	if !st.SpeedWatermark.IsZero() {
		w := st.SpeedWatermark
		resp.Meta.SpeedWatermark = &w
		resp.Meta.LagSeconds = max(0, now.Sub(w).Seconds())
	}
	for _, d := range st.Dirty {
		resp.Meta.PendingCorrections = append(resp.Meta.PendingCorrections, d.Format("2006-01-02"))
	}
	var key string
	if pl.DailyOnly && consistent {
		key = s.cacheKey(q, st, pl)
		if r, ok := s.cache.get(key); ok {
			s.m.cacheHits.Inc()
			resp.Rows, resp.Meta.Cached = r, true
			resp.Meta.Truncated = len(r.Rows) > q.Limit
			if resp.Meta.Truncated {
				resp.Rows = &Result{Columns: r.Columns, Rows: r.Rows[:q.Limit]}
			}
			return resp, nil
		}
		s.m.cacheMisses.Inc()
	}
	res, err := s.run(ctx, q, pl)
	if err != nil {
		return nil, s.dbError(ctx, "cannot run the query", err)
	}
	if key != "" {
		s.cache.put(key, res)
	}
	resp.Rows = res
	if len(res.Rows) > q.Limit {
		resp.Meta.Truncated = true
		resp.Rows = &Result{Columns: res.Columns, Rows: res.Rows[:q.Limit]}
	}
	return resp, nil
}

func (s *Server) dbError(ctx context.Context, msg string, err error) *APIError {
	var ex *clickhouse.Exception
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil || (errors.As(err, &ex) && ex.Code == 159) {
		return &APIError{Status: http.StatusGatewayTimeout, Message: fmt.Sprintf("query timed out after %s (serving.query_timeout)", s.cfg.Serving.QueryTimeout.D())}
	}
	s.log.Error(strings.TrimPrefix(msg, "cannot "), "request_id", RequestID(ctx), "err", err)
	return &APIError{Status: http.StatusInternalServerError, Message: msg + ": " + err.Error()}
}

// cacheKey identifies a result read wholly from <ds>_daily: the checked request, the config
// version and, per day read, its newest successful run and whether it is dirty, so a new exact
// day, a day turning dirty and a recomputed day each change it. (The boundary does not matter:
// such a result lies wholly before it.)
func (s *Server) cacheKey(q *Query, st *snapshot, pl *Plan) string {
	h := sha256.New()
	canon := struct {
		DS, Gran, Order string
		Metrics, Dims   []string
		Filters         []Filter
		From, To        int64
		Desc, Exact     bool
		Limit           int
	}{q.DS.Name, q.Granularity, q.OrderBy, nil, q.Dimensions, q.Filters, q.From.Unix(), q.To.Unix(), q.Desc, q.Exact, q.Limit}
	for _, sp := range q.Specs {
		canon.Metrics = append(canon.Metrics, sp.Name)
	}
	b, _ := json.Marshal(canon)
	h.Write(b)
	fmt.Fprintf(h, "|%s|", s.cfg.Version)
	dirty := map[time.Time]bool{}
	for _, d := range st.Dirty {
		dirty[d] = true
	}
	for d := pl.DailyFrom; d.Before(pl.DailyTo); d = d.AddDate(0, 0, 1) {
		fmt.Fprintf(h, "%s:%v,", st.Runs[d].ID, dirty[d])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// run executes a plan and reads its rows.
func (s *Server) run(ctx context.Context, q *Query, pl *Plan) (*Result, error) {
	res := &Result{Columns: []string{"time"}}
	res.Columns = append(res.Columns, q.Dimensions...)
	for _, sp := range q.Specs {
		res.Columns = append(res.Columns, sp.Name)
	}
	res.Columns = append(res.Columns, "source", "exact")
	res.Rows = [][]any{}
	if pl.SQL == "" {
		return res, nil
	}
	rows, err := s.conn.Query(ctx, pl.SQL, pl.Args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var t time.Time
		dims := make([]string, len(q.Dimensions))
		vals := make([]any, len(q.Specs))
		dest := []any{&t}
		for i := range dims {
			dest = append(dest, &dims[i])
		}
		for i, sp := range q.Specs {
			if sp.ValueType() == "UInt64" {
				vals[i] = new(uint64)
			} else {
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
			}
		}
		row = append(row, src, exact == 1)
		res.Rows = append(res.Rows, row)
		s.m.rows.WithLabelValues(src).Inc()
	}
	return res, rows.Err()
}

// jsonFloat is a float64 that encodes NaN and infinities as null, which JSON cannot hold.
type jsonFloat float64

func (f jsonFloat) MarshalJSON() ([]byte, error) {
	v := float64(f)
	if v != v || v > 1.7976931348623157e308 || v < -1.7976931348623157e308 {
		return []byte("null"), nil
	}
	return strconv.AppendFloat(nil, v, 'g', -1, 64), nil
}

func writeCSV(c *gin.Context, resp *Response) {
	c.Header("Content-Type", "text/csv; charset=utf-8")
	c.Status(http.StatusOK)
	w := csv.NewWriter(c.Writer)
	_ = w.Write(resp.Rows.Columns)
	rec := make([]string, len(resp.Rows.Columns))
	for _, row := range resp.Rows.Rows {
		for i, v := range row {
			switch v := v.(type) {
			case time.Time:
				rec[i] = v.Format(time.RFC3339)
			case nil:
				rec[i] = ""
			case jsonFloat:
				rec[i] = strconv.FormatFloat(float64(v), 'g', -1, 64)
			default:
				rec[i] = fmt.Sprint(v)
			}
		}
		_ = w.Write(rec)
	}
	w.Flush()
}

// resultCache is an LRU of results read wholly from <ds>_daily.
type resultCache struct {
	mu  sync.Mutex
	max int
	ll  *list.List
	m   map[string]*list.Element
}

type cacheEntry struct {
	key string
	res *Result
}

func newResultCache(n int) *resultCache {
	return &resultCache{max: n, ll: list.New(), m: map[string]*list.Element{}}
}

func (c *resultCache) get(key string) (*Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok {
		return nil, false
	}
	c.ll.MoveToFront(e)
	return e.Value.(*cacheEntry).res, true
}

func (c *resultCache) put(key string, r *Result) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok {
		e.Value.(*cacheEntry).res = r
		c.ll.MoveToFront(e)
		return
	}
	c.m[key] = c.ll.PushFront(&cacheEntry{key: key, res: r})
	for c.ll.Len() > c.max {
		e := c.ll.Back()
		c.ll.Remove(e)
		delete(c.m, e.Value.(*cacheEntry).key)
	}
}
