package serving

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"github.com/gin-gonic/gin"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/metric"
)

// Limits of GET /api/v1/values.
const (
	defaultValuesLimit = 100
	maxValuesLimit     = 1000
	defaultValuesFrom  = "now-30d"
)

// Value is one value of a dimension with how often it occurs.
type Value struct {
	Value string `json:"value"`
	// Count is the dataset's first count metric over the range for this value; null when the
	// dataset has no count metric (the values are then in alphabetical order).
	Count *uint64 `json:"count"`
	Exact bool    `json:"exact"`
}

// ValuesResponse is the answer of GET /api/v1/values.
type ValuesResponse struct {
	Values []Value    `json:"values"`
	Meta   ValuesMeta `json:"meta"`
}

// ValuesMeta says what the values were counted over.
type ValuesMeta struct {
	Dataset   string `json:"dataset"`
	Dimension string `json:"dimension"`
	// Metric is the count metric the values are ordered by, "" when the dataset has none.
	Metric    string        `json:"metric"`
	Complete  bool          `json:"complete"`
	Truncated bool          `json:"truncated"`
	Sources   []SourceRange `json:"sources"`
	Cached    bool          `json:"cached"`
}

// ValuesRequest is what GET /api/v1/values takes.
type ValuesRequest struct {
	Dataset, Dimension, Prefix, From, To string
	Limit                                int
}

// countMetric is the metric values are counted with: the dataset's first count metric, or ""
// when it has none.
func countMetric(ds *config.Dataset) string {
	for _, s := range ds.Specs() {
		if s.Type == metric.Count {
			return s.Name
		}
	}
	return ""
}

// Values lists a dimension's values over [from, to) (default the last 30 days), most frequent
// first, for filter pickers. It is a query like any other (by the dimension, granularity all,
// the prefix as a prefix filter), so the planner reads the dimension's own grouping set from
// the batch tables up to the boundary and <ds>_speed after it: one small roll-up, never raw
// events unless no rollup covers the range.
func (s *Server) Values(ctx context.Context, vr ValuesRequest) (*ValuesResponse, *APIError) {
	ds, ok := s.cfg.Dataset(vr.Dataset)
	switch {
	case vr.Dataset == "":
		return nil, badRequest(CodeMissing, "dataset", "missing")
	case !ok:
		return nil, &APIError{Status: http.StatusNotFound, Code: CodeUnknownDataset, Field: "dataset", Message: fmt.Sprintf("unknown dataset %q", vr.Dataset)}
	case vr.Dimension == "":
		return nil, badRequest(CodeMissing, "dimension", "missing")
	case !ds.HasDimension(vr.Dimension):
		return nil, badRequest(CodeUnknownDimension, "dimension", "unknown dimension %q of dataset %s", vr.Dimension, ds.Name)
	case vr.Limit < 0 || vr.Limit > maxValuesLimit:
		return nil, badRequest(CodeInvalid, "limit", "must be within 0..%d (0: %d)", maxValuesLimit, defaultValuesLimit)
	}
	if vr.Limit == 0 {
		vr.Limit = defaultValuesLimit
	}
	if mr := s.cfg.Serving.MaxRows; mr > 0 {
		vr.Limit = min(vr.Limit, mr)
	}
	if vr.From == "" {
		vr.From = defaultValuesFrom
	}
	if vr.To == "" {
		vr.To = "now"
	}
	m := countMetric(ds)
	req := &Request{Dataset: ds.Name, Dimensions: []string{vr.Dimension}, From: vr.From, To: vr.To,
		Granularity: "all", Limit: vr.Limit}
	if m != "" {
		req.Metrics, req.OrderBy = []string{m}, "-"+m
	} else {
		req.Metrics, req.OrderBy = []string{ds.Specs()[0].Name}, vr.Dimension
	}
	if vr.Prefix != "" {
		req.Filters = []Filter{{Dimension: vr.Dimension, Op: "prefix", Values: []string{vr.Prefix}}}
	}
	resp, apiErr := s.Query(ctx, req)
	if apiErr != nil {
		return nil, apiErr
	}
	out := &ValuesResponse{Values: []Value{}, Meta: ValuesMeta{Dataset: ds.Name, Dimension: vr.Dimension, Metric: m,
		Complete: resp.Meta.Complete, Truncated: resp.Meta.Truncated, Sources: resp.Meta.Sources, Cached: resp.Meta.Cached}}
	for _, row := range resp.Rows.Rows {
		v := Value{Value: row[1].(string), Exact: row[len(row)-1].(bool)}
		if n, ok := row[2].(uint64); ok && m != "" {
			v.Count = &n
		}
		out.Values = append(out.Values, v)
	}
	return out, nil
}

func (s *Server) values(c *gin.Context) {
	vr := ValuesRequest{Dataset: c.Query("dataset"), Dimension: c.Query("dimension"), Prefix: c.Query("prefix"),
		From: c.Query("from"), To: c.Query("to")}
	if l := c.Query("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil {
			s.fail(c, badRequest(CodeMalformed, "limit", "not an integer: %q", l))
			return
		}
		vr.Limit = n
	}
	ctx, cancel := context.WithTimeout(c.Request.Context(), s.cfg.Serving.QueryTimeout.D())
	defer cancel()
	resp, apiErr := s.Values(ctx, vr)
	if apiErr != nil {
		s.fail(c, apiErr)
		return
	}
	c.JSON(http.StatusOK, resp)
}
