package serving

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/metric"
)

// Request is the body of POST /api/v1/query (GET takes the same fields as query parameters,
// lists comma-separated, filters as a JSON array).
type Request struct {
	Dataset     string   `json:"dataset"`
	Metrics     []string `json:"metrics"`
	Dimensions  []string `json:"dimensions,omitempty"`
	Filters     []Filter `json:"filters,omitempty"`
	From        string   `json:"from"`
	To          string   `json:"to"`
	Granularity string   `json:"granularity,omitempty"`
	OrderBy     string   `json:"order_by,omitempty"`
	Limit       int      `json:"limit,omitempty"`
	Exact       bool     `json:"exact,omitempty"`
}

// Filter restricts a dimension to (eq, in) or away from (neq, not_in) values.
type Filter struct {
	Dimension string   `json:"dimension"`
	Op        string   `json:"op"`
	Values    []string `json:"values"`
}

// Granularities in order of size.
var Granularities = []string{"minute", "hour", "day", "week", "month", "all"}

// Filter operators.
var Ops = []string{"eq", "neq", "in", "not_in"}

// maxFilterValues bounds the values of one filter.
const maxFilterValues = 1000

// APIError is a refusal: an HTTP status and a message naming the field.
type APIError struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Field   string `json:"field,omitempty"`
}

func (e *APIError) Error() string {
	if e.Field == "" {
		return e.Message
	}
	return e.Field + ": " + e.Message
}

func badRequest(field, format string, args ...any) *APIError {
	return &APIError{Status: 400, Field: field, Message: fmt.Sprintf(format, args...)}
}

// Query is a request checked against the configuration: every name is known, the range is
// ordered and bounded. The planner builds SQL only from a Query.
type Query struct {
	DS          *config.Dataset
	Specs       []metric.Spec
	Dimensions  []string // requested, in request order
	Filters     []Filter // dimensions known, values non-empty
	From, To    time.Time
	Granularity string
	OrderBy     string // "time", a dimension or a metric
	Desc        bool
	Limit       int
	Exact       bool
}

// DecodeRequest decodes a JSON body strictly: unknown fields and trailing data are errors.
func DecodeRequest(body []byte) (*Request, *APIError) {
	var r Request
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, badRequest("body", "malformed JSON: %v", err)
	}
	if dec.More() {
		return nil, badRequest("body", "malformed JSON: data after the request object")
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
	}
	if f := v.Get("filters"); f != "" {
		dec := json.NewDecoder(strings.NewReader(f))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r.Filters); err != nil {
			return nil, badRequest("filters", "malformed JSON array of filters: %v", err)
		}
	}
	if l := v.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil {
			return nil, badRequest("limit", "not an integer: %q", l)
		}
		r.Limit = n
	}
	if e := v.Get("exact"); e != "" {
		b, err := strconv.ParseBool(e)
		if err != nil {
			return nil, badRequest("exact", "not a boolean: %q", e)
		}
		r.Exact = b
	}
	return r, nil
}

// ParseTime reads an RFC 3339 time, a UTC day (2006-01-02), "now", or "now-<duration>" such
// as now-6h or now-30d.
func ParseTime(s string, now time.Time) (time.Time, error) {
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
		return t, nil
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

// Check validates a request against the configuration. Unknown datasets are 404, everything
// else 400, each naming the field.
func Check(cfg *config.Config, r *Request, lim Limits, now time.Time) (*Query, *APIError) {
	ds, ok := cfg.Dataset(r.Dataset)
	if !ok {
		if r.Dataset == "" {
			return nil, badRequest("dataset", "missing")
		}
		return nil, &APIError{Status: 404, Field: "dataset", Message: fmt.Sprintf("unknown dataset %q", r.Dataset)}
	}
	q := &Query{DS: ds, Exact: r.Exact}
	if len(r.Metrics) == 0 {
		return nil, badRequest("metrics", "at least one metric is required")
	}
	for _, m := range r.Metrics {
		s, ok := ds.Spec(m)
		if !ok {
			return nil, badRequest("metrics", "unknown metric %q of dataset %s", m, ds.Name)
		}
		if slices.ContainsFunc(q.Specs, func(x metric.Spec) bool { return x.Name == m }) {
			return nil, badRequest("metrics", "metric %q given twice", m)
		}
		q.Specs = append(q.Specs, s)
	}
	for _, d := range r.Dimensions {
		if !ds.HasDimension(d) {
			return nil, badRequest("dimensions", "unknown dimension %q of dataset %s", d, ds.Name)
		}
		if slices.Contains(q.Dimensions, d) {
			return nil, badRequest("dimensions", "dimension %q given twice", d)
		}
		q.Dimensions = append(q.Dimensions, d)
	}
	for i, f := range r.Filters {
		field := fmt.Sprintf("filters[%d]", i)
		if !ds.HasDimension(f.Dimension) {
			return nil, badRequest(field+".dimension", "unknown dimension %q of dataset %s", f.Dimension, ds.Name)
		}
		if !slices.Contains(Ops, f.Op) {
			return nil, badRequest(field+".op", "unknown operator %q (want eq, neq, in or not_in)", f.Op)
		}
		switch {
		case len(f.Values) == 0:
			return nil, badRequest(field+".values", "at least one value is required")
		case (f.Op == "eq" || f.Op == "neq") && len(f.Values) != 1:
			return nil, badRequest(field+".values", "%s takes exactly one value", f.Op)
		case len(f.Values) > maxFilterValues:
			return nil, badRequest(field+".values", "at most %d values", maxFilterValues)
		}
		q.Filters = append(q.Filters, Filter{Dimension: f.Dimension, Op: f.Op, Values: slices.Clone(f.Values)})
	}
	var err error
	if r.From == "" {
		return nil, badRequest("from", "missing")
	}
	if q.From, err = ParseTime(r.From, now); err != nil {
		return nil, badRequest("from", "%v", err)
	}
	if r.To == "" {
		return nil, badRequest("to", "missing")
	}
	if q.To, err = ParseTime(r.To, now); err != nil {
		return nil, badRequest("to", "%v", err)
	}
	if q.From.Before(minTime) || q.From.After(maxTime) {
		return nil, badRequest("from", "out of range 1970-01-01 to 2106-01-01")
	}
	if q.To.Before(minTime) || q.To.After(maxTime) {
		return nil, badRequest("to", "out of range 1970-01-01 to 2106-01-01")
	}
	if !q.From.Before(q.To) {
		return nil, badRequest("to", "must be after from (the range is [from, to))")
	}
	// Buckets start at whole seconds: ClickHouse DateTime has no fractions.
	q.From, q.To = q.From.Truncate(time.Second), q.To.Truncate(time.Second)
	if q.From.Equal(q.To) {
		return nil, badRequest("to", "must be after from (the range is [from, to))")
	}
	q.Granularity = r.Granularity
	if q.Granularity == "" {
		q.Granularity = "day"
	}
	if !slices.Contains(Granularities, q.Granularity) {
		return nil, badRequest("granularity", "unknown granularity %q (want minute, hour, day, week, month or all)", q.Granularity)
	}
	if n := bucketCount(q.Granularity, q.From, q.To); lim.MaxBuckets > 0 && n > int64(lim.MaxBuckets) {
		return nil, badRequest("granularity", "%d %s buckets in the range, at most %d: choose a coarser granularity or a shorter range", n, q.Granularity, lim.MaxBuckets)
	}
	q.Limit = r.Limit
	switch {
	case r.Limit < 0:
		return nil, badRequest("limit", "must not be negative")
	case lim.MaxRows > 0 && r.Limit > lim.MaxRows:
		return nil, badRequest("limit", "at most %d rows", lim.MaxRows)
	case r.Limit == 0:
		q.Limit = lim.MaxRows
	}
	if q.Limit == 0 {
		q.Limit = 100_000
	}
	q.OrderBy = "time"
	if o := r.OrderBy; o != "" {
		name := o
		if n, ok := strings.CutPrefix(o, "-"); ok {
			name, q.Desc = n, true
		} else if n, ok := strings.CutSuffix(o, " desc"); ok {
			name, q.Desc = n, true
		}
		known := name == "time" || slices.Contains(q.Dimensions, name) ||
			slices.ContainsFunc(q.Specs, func(s metric.Spec) bool { return s.Name == name })
		if !known {
			return nil, badRequest("order_by", "%q is not time, a requested dimension or a requested metric", o)
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
