package serving

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/metric"
)

// Request is the body of POST /api/v1/query (GET takes the same fields as query parameters,
// lists comma-separated, filters and having as JSON arrays).
type Request struct {
	Dataset     string   `json:"dataset"`
	Metrics     []string `json:"metrics"`
	Dimensions  []string `json:"dimensions,omitempty"`
	Filters     []Filter `json:"filters,omitempty"`
	Having      []Having `json:"having,omitempty"`
	From        string   `json:"from"`
	To          string   `json:"to"`
	Granularity string   `json:"granularity,omitempty"`
	OrderBy     string   `json:"order_by,omitempty"`
	Limit       int      `json:"limit,omitempty"`
	Offset      int      `json:"offset,omitempty"`
	Exact       bool     `json:"exact,omitempty"`
	// TimeZone is the IANA zone of the buckets and of YYYY-MM-DD in from and to; default the
	// dataset's time_zone. Day, week and month buckets in another zone than the dataset's come
	// from raw (exact), while raw holds the range.
	TimeZone string `json:"time_zone,omitempty"`
}

// Filter restricts a dimension to (eq, in) or away from (neq, not_in) values, or to values
// starting with (prefix) or containing (contains) one string, case-sensitively.
type Filter struct {
	Dimension string   `json:"dimension"`
	Op        string   `json:"op"`
	Values    []string `json:"values"`
}

// Having keeps the rows whose metric compares with Value: applied to each row's merged value,
// before order, offset and limit. A NULL value compares with nothing: the row goes.
type Having struct {
	Metric string   `json:"metric"`
	Op     string   `json:"op"`
	Value  *float64 `json:"value"`
}

// Granularities in order of size.
var Granularities = []string{"minute", "hour", "day", "week", "month", "all"}

// Filter operators.
var Ops = []string{"eq", "neq", "in", "not_in", "prefix", "contains"}

// HavingOps are the comparisons of having, with their SQL operators.
var HavingOps = []string{"gt", "gte", "lt", "lte", "eq", "neq"}

var havingSQL = map[string]string{"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "eq": "=", "neq": "!="}

const (
	// maxFilterValues bounds the values of one filter.
	maxFilterValues = 1000
	// maxHaving bounds the conditions of having.
	maxHaving = 32
	// maxOffset bounds offset: paging reads every row before the page.
	maxOffset = 1_000_000
)

// Error codes: the stable, machine-readable part of an error (APIError.Code). docs/api.md
// lists them; clients branch on them, never on the message.
const (
	CodeMalformed          = "malformed_request"   // 400: not JSON, an unknown field, a parameter of the wrong type
	CodeMissing            = "missing_field"       // 400: a required field is absent
	CodeUnknownDataset     = "unknown_dataset"     // 404
	CodeUnknownMetric      = "unknown_metric"      // 400
	CodeUnknownDimension   = "unknown_dimension"   // 400
	CodeUnknownOperator    = "unknown_operator"    // 400: a filter's or having's op
	CodeUnknownGranularity = "unknown_granularity" // 400
	CodeUnknownFormat      = "unknown_format"      // 400
	CodeInvalid            = "invalid_value"       // 400: a value the field does not accept
	CodeBadRange           = "bad_range"           // 400: from/to unreadable, out of range or not ordered
	CodeTooManyBuckets     = "too_many_buckets"    // 400: serving.max_buckets
	CodeTooManyRows        = "too_many_rows"       // 400: limit over serving.max_rows, offset too far
	CodeRawRetention       = "raw_retention"       // 400: needs raw events older than raw_retention
	CodeBodyTooLarge       = "body_too_large"      // 413: serving.max_body_bytes
	CodeUnauthorized       = "unauthorized"        // 401
	CodeNotFound           = "not_found"           // 404: no such path
	CodeMethodNotAllowed   = "method_not_allowed"  // 405
	CodeTimeout            = "timeout"             // 504: serving.query_timeout
	CodeUnavailable        = "unavailable"         // 503: ClickHouse cannot be reached; retry later
	CodeInternal           = "internal"            // 500: the server log has the cause under the request id
)

// Codes lists every error code, for the OpenAPI document.
var Codes = []string{CodeMalformed, CodeMissing, CodeUnknownDataset, CodeUnknownMetric, CodeUnknownDimension,
	CodeUnknownOperator, CodeUnknownGranularity, CodeUnknownFormat, CodeInvalid, CodeBadRange, CodeTooManyBuckets,
	CodeTooManyRows, CodeRawRetention, CodeBodyTooLarge, CodeUnauthorized, CodeNotFound, CodeMethodNotAllowed,
	CodeTimeout, CodeUnavailable, CodeInternal}

// APIError is a refusal: an HTTP status, a stable code, a message for people and the field
// it is about ("" when none).
type APIError struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Field   string `json:"field"`
	Code    string `json:"code"`
}

func (e *APIError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

func badRequest(code, field, format string, args ...any) *APIError {
	return &APIError{Status: 400, Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Query is a request checked against the configuration: every name is known, the range is
// ordered and bounded. The planner builds SQL only from a Query.
type Query struct {
	DS *config.Dataset
	// Metrics are the requested metrics in request order: the result's metric columns.
	Metrics []string
	// Specs are the stored metrics the SQL computes: the requested ones and the parts of the
	// requested ratios and of having. Every one counts toward a row's exactness.
	Specs []metric.Spec
	// Ratios are the ratio metrics among Metrics and Having.
	Ratios      []config.Ratio
	Dimensions  []string // requested, in request order
	Filters     []Filter // dimensions known, values non-empty
	Having      []Having // metrics known, values set
	From, To    time.Time
	Granularity string
	OrderBy     string // "time", a dimension or a metric
	Desc        bool
	Limit       int
	Offset      int
	Exact       bool
	// Zone is the request's time zone (time_zone, default the dataset's): buckets start at its
	// minutes, hours, midnights, Mondays and first days of months.
	Zone *time.Location
}

// otherZone reports whether the request's buckets are in another zone than the dataset's days.
func (q *Query) otherZone() bool { return q.zone().String() != q.DS.Location().String() }

// DecodeRequest decodes a JSON body strictly: unknown fields and trailing data are errors.
func DecodeRequest(body []byte) (*Request, *APIError) {
	var r Request
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, badRequest(CodeMalformed, "body", "malformed JSON: %v", err)
	}
	if dec.More() {
		return nil, badRequest(CodeMalformed, "body", "malformed JSON: data after the request object")
	}
	return &r, nil
}

// RequestFromValues reads a request from URL query parameters.
func RequestFromValues(v url.Values) (*Request, *APIError) {
	list := func(k string) []string {
		var out []string
		for _, s := range v[k] {
			for _, p := range strings.Split(s, ",") {
				if p = strings.TrimSpace(p); p != "" {
					out = append(out, p)
				}
			}
		}
		return out
	}
	r := &Request{
		Dataset: v.Get("dataset"), Metrics: list("metrics"), Dimensions: list("dimensions"),
		From: v.Get("from"), To: v.Get("to"), Granularity: v.Get("granularity"), OrderBy: v.Get("order_by"),
		TimeZone: v.Get("time_zone"),
	}
	for _, a := range []struct {
		key, what string
		dest      any
	}{{"filters", "filters", &r.Filters}, {"having", "having conditions", &r.Having}} {
		if f := v.Get(a.key); f != "" {
			dec := json.NewDecoder(strings.NewReader(f))
			dec.DisallowUnknownFields()
			if err := dec.Decode(a.dest); err != nil {
				return nil, badRequest(CodeMalformed, a.key, "malformed JSON array of %s: %v", a.what, err)
			}
		}
	}
	for _, a := range []struct {
		key  string
		dest *int
	}{{"limit", &r.Limit}, {"offset", &r.Offset}} {
		if l := v.Get(a.key); l != "" {
			n, err := strconv.Atoi(l)
			if err != nil {
				return nil, badRequest(CodeMalformed, a.key, "not an integer: %q", l)
			}
			*a.dest = n
		}
	}
	if e := v.Get("exact"); e != "" {
		b, err := strconv.ParseBool(e)
		if err != nil {
			return nil, badRequest(CodeMalformed, "exact", "not a boolean: %q", e)
		}
		r.Exact = b
	}
	return r, nil
}

// ParseTime reads an RFC 3339 time, a UTC day (2006-01-02), "now", or "now-<duration>" such
// as now-6h or now-30d.
func ParseTime(s string, now time.Time) (time.Time, error) { return ParseTimeIn(s, now, time.UTC) }

// ParseTimeIn is ParseTime with a day (2006-01-02) read as its midnight in loc.
func ParseTimeIn(s string, now time.Time, loc *time.Location) (time.Time, error) {
	switch {
	case s == "now":
		return now.UTC(), nil
	case strings.HasPrefix(s, "now-"):
		d, err := config.ParseDuration(s[len("now-"):])
		if err != nil {
			return time.Time{}, err
		}
		return now.Add(-d).UTC(), nil
	}
	if t, err := time.Parse("2006-01-02", s); err == nil {
		return ledger.DayStart(t, loc), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("want RFC 3339, YYYY-MM-DD, now or now-<duration>, got %q", s)
	}
	return t.UTC(), nil
}

// Limits bound what one request may ask for.
type Limits struct {
	MaxRows    int
	MaxBuckets int
}

var (
	minTime = time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTime = time.Date(2106, 1, 1, 0, 0, 0, 0, time.UTC) // DateTime ends in 2106
)

// addMetric adds a metric of the dataset to what the query computes: a stored metric to Specs,
// a ratio to Ratios and its parts to Specs. It reports whether the dataset has the metric.
func (q *Query) addMetric(name string) bool {
	if s, ok := q.DS.Spec(name); ok {
		if !slices.ContainsFunc(q.Specs, func(x metric.Spec) bool { return x.Name == name }) {
			q.Specs = append(q.Specs, s)
		}
		return true
	}
	r, ok := q.DS.RatioOf(name)
	if !ok {
		return false
	}
	if !slices.Contains(q.Ratios, r) {
		q.Ratios = append(q.Ratios, r)
	}
	q.addMetric(r.Numerator)
	q.addMetric(r.Denominator)
	return true
}

// spec returns the stored metric the query computes under name.
func (q *Query) spec(name string) (metric.Spec, bool) {
	i := slices.IndexFunc(q.Specs, func(s metric.Spec) bool { return s.Name == name })
	if i < 0 {
		return metric.Spec{}, false
	}
	return q.Specs[i], true
}

// ratio returns the ratio the query computes under name.
func (q *Query) ratio(name string) (config.Ratio, bool) {
	i := slices.IndexFunc(q.Ratios, func(r config.Ratio) bool { return r.Name == name })
	if i < 0 {
		return config.Ratio{}, false
	}
	return q.Ratios[i], true
}

// Check validates a request against the configuration. Unknown datasets are 404, everything
// else 400, each naming the field and giving a code.
func Check(cfg *config.Config, r *Request, lim Limits, now time.Time) (*Query, *APIError) {
	ds, ok := cfg.Dataset(r.Dataset)
	if !ok {
		if r.Dataset == "" {
			return nil, badRequest(CodeMissing, "dataset", "missing")
		}
		return nil, &APIError{Status: 404, Code: CodeUnknownDataset, Field: "dataset", Message: fmt.Sprintf("unknown dataset %q", r.Dataset)}
	}
	q := &Query{DS: ds, Exact: r.Exact}
	if len(r.Metrics) == 0 {
		return nil, badRequest(CodeMissing, "metrics", "at least one metric is required")
	}
	for _, m := range r.Metrics {
		if slices.Contains(q.Metrics, m) {
			return nil, badRequest(CodeInvalid, "metrics", "metric %q given twice", m)
		}
		if !q.addMetric(m) {
			return nil, badRequest(CodeUnknownMetric, "metrics", "unknown metric %q of dataset %s", m, ds.Name)
		}
		q.Metrics = append(q.Metrics, m)
	}
	for _, d := range r.Dimensions {
		if !ds.HasDimension(d) {
			return nil, badRequest(CodeUnknownDimension, "dimensions", "unknown dimension %q of dataset %s", d, ds.Name)
		}
		if slices.Contains(q.Dimensions, d) {
			return nil, badRequest(CodeInvalid, "dimensions", "dimension %q given twice", d)
		}
		q.Dimensions = append(q.Dimensions, d)
	}
	for i, f := range r.Filters {
		field := fmt.Sprintf("filters[%d]", i)
		if !ds.HasDimension(f.Dimension) {
			return nil, badRequest(CodeUnknownDimension, field+".dimension", "unknown dimension %q of dataset %s", f.Dimension, ds.Name)
		}
		if !slices.Contains(Ops, f.Op) {
			return nil, badRequest(CodeUnknownOperator, field+".op", "unknown operator %q (want %s)", f.Op, strings.Join(Ops, ", "))
		}
		single := f.Op == "eq" || f.Op == "neq" || f.Op == "prefix" || f.Op == "contains"
		switch {
		case len(f.Values) == 0:
			return nil, badRequest(CodeMissing, field+".values", "at least one value is required")
		case single && len(f.Values) != 1:
			return nil, badRequest(CodeInvalid, field+".values", "%s takes exactly one value", f.Op)
		case len(f.Values) > maxFilterValues:
			return nil, badRequest(CodeInvalid, field+".values", "at most %d values", maxFilterValues)
		}
		q.Filters = append(q.Filters, Filter{Dimension: f.Dimension, Op: f.Op, Values: slices.Clone(f.Values)})
	}
	if len(r.Having) > maxHaving {
		return nil, badRequest(CodeInvalid, "having", "at most %d conditions", maxHaving)
	}
	for i, h := range r.Having {
		field := fmt.Sprintf("having[%d]", i)
		switch {
		case h.Metric == "":
			return nil, badRequest(CodeMissing, field+".metric", "missing")
		case !q.addMetric(h.Metric):
			return nil, badRequest(CodeUnknownMetric, field+".metric", "unknown metric %q of dataset %s", h.Metric, ds.Name)
		case !slices.Contains(HavingOps, h.Op):
			return nil, badRequest(CodeUnknownOperator, field+".op", "unknown operator %q (want %s)", h.Op, strings.Join(HavingOps, ", "))
		case h.Value == nil:
			return nil, badRequest(CodeMissing, field+".value", "a number is required")
		case math.IsNaN(*h.Value) || math.IsInf(*h.Value, 0):
			return nil, badRequest(CodeInvalid, field+".value", "not a finite number")
		}
		v := *h.Value
		q.Having = append(q.Having, Having{Metric: h.Metric, Op: h.Op, Value: &v})
	}
	q.Zone = ds.Location()
	if r.TimeZone != "" {
		loc, err := config.LoadZone(r.TimeZone)
		if err != nil {
			return nil, badRequest(CodeInvalid, "time_zone", "%v", err)
		}
		q.Zone = loc
	}
	var err error
	if r.From == "" {
		return nil, badRequest(CodeMissing, "from", "missing")
	}
	if q.From, err = ParseTimeIn(r.From, now, q.Zone); err != nil {
		return nil, badRequest(CodeBadRange, "from", "%v", err)
	}
	if r.To == "" {
		return nil, badRequest(CodeMissing, "to", "missing")
	}
	if q.To, err = ParseTimeIn(r.To, now, q.Zone); err != nil {
		return nil, badRequest(CodeBadRange, "to", "%v", err)
	}
	if q.From.Before(minTime) || q.From.After(maxTime) {
		return nil, badRequest(CodeBadRange, "from", "out of range 1970-01-01 to 2106-01-01")
	}
	if q.To.Before(minTime) || q.To.After(maxTime) {
		return nil, badRequest(CodeBadRange, "to", "out of range 1970-01-01 to 2106-01-01")
	}
	if !q.From.Before(q.To) {
		return nil, badRequest(CodeBadRange, "to", "must be after from (the range is [from, to))")
	}
	// Buckets start at whole seconds: ClickHouse DateTime has no fractions.
	q.From, q.To = q.From.Truncate(time.Second), q.To.Truncate(time.Second)
	if q.From.Equal(q.To) {
		return nil, badRequest(CodeBadRange, "to", "must be after from (the range is [from, to))")
	}
	q.Granularity = r.Granularity
	if q.Granularity == "" {
		q.Granularity = "day"
	}
	if !slices.Contains(Granularities, q.Granularity) {
		return nil, badRequest(CodeUnknownGranularity, "granularity", "unknown granularity %q (want minute, hour, day, week, month or all)", q.Granularity)
	}
	if n := bucketCount(q.Granularity, q.From, q.To); lim.MaxBuckets > 0 && n > int64(lim.MaxBuckets) {
		return nil, badRequest(CodeTooManyBuckets, "granularity", "%d %s buckets in the range, at most %d: choose a coarser granularity or a shorter range", n, q.Granularity, lim.MaxBuckets)
	}
	q.Limit = r.Limit
	switch {
	case r.Limit < 0:
		return nil, badRequest(CodeInvalid, "limit", "must not be negative")
	case lim.MaxRows > 0 && r.Limit > lim.MaxRows:
		return nil, badRequest(CodeTooManyRows, "limit", "at most %d rows", lim.MaxRows)
	case r.Limit == 0:
		q.Limit = lim.MaxRows
	}
	if q.Limit == 0 {
		q.Limit = 100_000
	}
	switch q.Offset = r.Offset; {
	case r.Offset < 0:
		return nil, badRequest(CodeInvalid, "offset", "must not be negative")
	case r.Offset > maxOffset:
		return nil, badRequest(CodeTooManyRows, "offset", "at most %d: narrow the request with filters or having instead", maxOffset)
	}
	q.OrderBy = "time"
	if o := r.OrderBy; o != "" {
		name := o
		if n, ok := strings.CutPrefix(o, "-"); ok {
			name, q.Desc = n, true
		} else if n, ok := strings.CutSuffix(o, " desc"); ok {
			name, q.Desc = n, true
		}
		known := name == "time" || slices.Contains(q.Dimensions, name) || slices.Contains(q.Metrics, name)
		if !known {
			return nil, badRequest(CodeInvalid, "order_by", "%q is not time, a requested dimension or a requested metric", o)
		}
		q.OrderBy = name
	}
	return q, nil
}

// bucketCount is the number of buckets of a granularity in [from, to).
func bucketCount(g string, from, to time.Time) int64 {
	switch g {
	case "minute":
		return int64(to.Sub(from)/time.Minute) + 1
	case "hour":
		return int64(to.Sub(from)/time.Hour) + 1
	case "day":
		return int64(to.Sub(from)/(24*time.Hour)) + 1
	case "week":
		return int64(to.Sub(from)/(7*24*time.Hour)) + 2
	case "month":
		return int64((to.Year()-from.Year())*12+int(to.Month()-from.Month())) + 1
	}
	return 1
}
