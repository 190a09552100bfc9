package dashboards

import (
	"fmt"
	"slices"

	"github.com/lambda-platform/lambda/shared/config"
)

// Dashboard is one dashboard definition (defs/<id>.json). Range and Granularity are the
// defaults of the page's selectors; a panel that sets its own keeps it whatever the selectors
// say (a "daily active users" panel stays at day granularity).
type Dashboard struct {
	ID          string  `json:"id"`
	Title       string  `json:"title"`
	Dataset     string  `json:"dataset"`
	Description string  `json:"description,omitempty"`
	Range       string  `json:"range,omitempty"`
	Granularity string  `json:"granularity,omitempty"`
	Panels      []Panel `json:"panels"`
}

// Panel is one chart of a dashboard.
//
//   - timeseries: Metrics over time; with Dimension, one series per value of the first metric
//     (the Limit largest, default 5). The batch/speed boundary is drawn on it.
//   - bar: the first metric per value of Dimension over the whole range, largest first.
//   - table: every metric per value of Dimension (or per time bucket without one).
//   - stat: every metric over the whole range.
type Panel struct {
	ID          string   `json:"id"`
	Title       string   `json:"title"`
	Type        string   `json:"type"`
	Metrics     []string `json:"metrics"`
	Dimension   string   `json:"dimension,omitempty"`
	Filters     []Filter `json:"filters,omitempty"`
	Granularity string   `json:"granularity,omitempty"`
	Range       string   `json:"range,omitempty"`
	Limit       int      `json:"limit,omitempty"`
	Exact       bool     `json:"exact,omitempty"`
	Width       int      `json:"width,omitempty"` // grid columns out of 12; 0 picks by type
}

// Filter restricts a panel's query, as in the query API.
type Filter struct {
	Dimension string   `json:"dimension"`
	Op        string   `json:"op"`
	Values    []string `json:"values"`
}

// Panel types, ranges, granularities and filter operators the page understands.
var (
	PanelTypes    = []string{"timeseries", "bar", "table", "stat"}
	Ranges        = []string{"6h", "24h", "7d", "30d"}
	Granularities = []string{"minute", "hour", "day", "week", "month"}
	FilterOps     = []string{"eq", "neq", "in", "not_in", "prefix", "contains"}
)

// Validate checks a definition on its own; Check checks it against a configuration.
func (d *Dashboard) Validate() error {
	if d.Title == "" {
		return fmt.Errorf("title: missing")
	}
	if d.Dataset == "" {
		return fmt.Errorf("dataset: missing")
	}
	if d.Range != "" && !slices.Contains(Ranges, d.Range) {
		return fmt.Errorf("range: %q is not one of %v", d.Range, Ranges)
	}
	if d.Granularity != "" && !slices.Contains(Granularities, d.Granularity) {
		return fmt.Errorf("granularity: %q is not one of %v", d.Granularity, Granularities)
	}
	if len(d.Panels) == 0 {
		return fmt.Errorf("panels: none")
	}
	seen := map[string]bool{}
	for i, p := range d.Panels {
		if err := p.validate(); err != nil {
			return fmt.Errorf("panels[%d].%w", i, err)
		}
		if seen[p.ID] {
			return fmt.Errorf("panels[%d].id: %q used twice", i, p.ID)
		}
		seen[p.ID] = true
	}
	return nil
}

func (p *Panel) validate() error {
	if p.ID == "" {
		return fmt.Errorf("id: missing")
	}
	if !slices.Contains(PanelTypes, p.Type) {
		return fmt.Errorf("type: %q is not one of %v", p.Type, PanelTypes)
	}
	if len(p.Metrics) == 0 {
		return fmt.Errorf("metrics: none")
	}
	if p.Type == "bar" && p.Dimension == "" {
		return fmt.Errorf("dimension: a bar panel needs one")
	}
	if p.Range != "" && !slices.Contains(Ranges, p.Range) {
		return fmt.Errorf("range: %q is not one of %v", p.Range, Ranges)
	}
	if p.Granularity != "" && !slices.Contains(Granularities, p.Granularity) {
		return fmt.Errorf("granularity: %q is not one of %v", p.Granularity, Granularities)
	}
	if p.Limit < 0 {
		return fmt.Errorf("limit: %d is negative", p.Limit)
	}
	if p.Width < 0 || p.Width > 12 {
		return fmt.Errorf("width: %d is not within 1..12", p.Width)
	}
	for i, f := range p.Filters {
		if f.Dimension == "" {
			return fmt.Errorf("filters[%d].dimension: missing", i)
		}
		if !slices.Contains(FilterOps, f.Op) {
			return fmt.Errorf("filters[%d].op: %q is not one of %v", i, f.Op, FilterOps)
		}
		if len(f.Values) == 0 {
			return fmt.Errorf("filters[%d].values: none", i)
		}
	}
	return nil
}

// Check reports names in d that cfg does not declare: the dataset, metrics and dimensions.
func (d *Dashboard) Check(cfg *config.Config) error {
	ds, ok := cfg.Dataset(d.Dataset)
	if !ok {
		return fmt.Errorf("dashboard %s: dataset: %q is not in %s", d.ID, d.Dataset, cfg.File)
	}
	metrics := map[string]bool{}
	for _, m := range ds.Metrics {
		metrics[m.Name] = true
	}
	for i, p := range d.Panels {
		for j, m := range p.Metrics {
			if !metrics[m] {
				return fmt.Errorf("dashboard %s: panels[%d].metrics[%d]: dataset %s has no metric %q", d.ID, i, j, ds.Name, m)
			}
		}
		if p.Dimension != "" && !ds.HasDimension(p.Dimension) {
			return fmt.Errorf("dashboard %s: panels[%d].dimension: dataset %s has no dimension %q", d.ID, i, ds.Name, p.Dimension)
		}
		for j, f := range p.Filters {
			if !ds.HasDimension(f.Dimension) {
				return fmt.Errorf("dashboard %s: panels[%d].filters[%d].dimension: dataset %s has no dimension %q", d.ID, i, j, ds.Name, f.Dimension)
			}
		}
	}
	return nil
}
