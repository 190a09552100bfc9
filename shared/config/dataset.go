package config

import (
	"slices"
	"strings"

	"github.com/lambda-platform/lambda/shared/metric"
)

// Column is a raw column that holds a metric's input field.
type Column struct {
	Name  string // column name in <ds>_raw
	Field string // dotted path in the event
	Type  string // metric.NumberType or metric.KeyType
}

// ColumnName is the raw column name of an event field: the dotted path with dots as
// underscores ("user.id" is user_id).
func ColumnName(field string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(field) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// Specs returns the dataset's stored metrics as catalogue entries, in config order: every
// metric but the ratios (see Ratios), which no table stores.
func (d *Dataset) Specs() []metric.Spec {
	out := make([]metric.Spec, 0, len(d.Metrics))
	for _, m := range d.Metrics {
		if m.Type == string(metric.Ratio) {
			continue
		}
		s := metric.Spec{Name: m.Name, Type: metric.Type(m.Type), Level: m.Level, Decimals: m.Decimals}
		if m.Type != string(metric.Count) {
			s.Column = ColumnName(m.Field)
		}
		out = append(out, s)
	}
	return out
}

// Ratio is a derived metric: Numerator / Denominator, both stored metrics of the dataset.
type Ratio struct {
	Name, Numerator, Denominator string
}

// Ratios returns the dataset's ratio metrics in config order.
func (d *Dataset) Ratios() []Ratio {
	var out []Ratio
	for _, m := range d.Metrics {
		if m.Type == string(metric.Ratio) {
			out = append(out, Ratio{Name: m.Name, Numerator: m.Numerator, Denominator: m.Denominator})
		}
	}
	return out
}

// RatioOf returns the ratio metric with the given name.
func (d *Dataset) RatioOf(name string) (Ratio, bool) {
	for _, r := range d.Ratios() {
		if r.Name == name {
			return r, true
		}
	}
	return Ratio{}, false
}

// MetricNames returns the names of every metric, stored and ratio, in config order.
func (d *Dataset) MetricNames() []string {
	out := make([]string, len(d.Metrics))
	for i, m := range d.Metrics {
		out[i] = m.Name
	}
	return out
}

// Spec returns the metric with the given name.
func (d *Dataset) Spec(name string) (metric.Spec, bool) {
	for _, s := range d.Specs() {
		if s.Name == name {
			return s, true
		}
	}
	return metric.Spec{}, false
}

// ValueColumns returns the raw columns that hold metric inputs, one per distinct field, in
// order of first use.
func (d *Dataset) ValueColumns() []Column {
	var out []Column
	for _, s := range d.Specs() {
		if s.Type == metric.Count {
			continue
		}
		if slices.ContainsFunc(out, func(c Column) bool { return c.Name == s.Column }) {
			continue
		}
		field := ""
		for _, m := range d.Metrics {
			if m.Name == s.Name {
				field = m.Field
			}
		}
		out = append(out, Column{Name: s.Column, Field: field, Type: s.RawType()})
	}
	return out
}

// PresenceColumns returns the numeric raw columns read by a metric whose value from a state
// cannot tell "no values" (sum, min, max): <ds>_speed keeps a presence state for each (see
// metric.PresenceColumn), in order of first use.
func (d *Dataset) PresenceColumns() []string {
	var out []string
	for _, s := range d.Specs() {
		if s.NeedsPresence() && !slices.Contains(out, s.Column) {
			out = append(out, s.Column)
		}
	}
	return out
}

// DimensionNames returns the dimension names in config order.
func (d *Dataset) DimensionNames() []string {
	out := make([]string, len(d.Dimensions))
	for i, dim := range d.Dimensions {
		out[i] = dim.Name
	}
	return out
}

// HasDimension reports whether name is a dimension of the dataset.
func (d *Dataset) HasDimension(name string) bool {
	return slices.Contains(d.DimensionNames(), name)
}

// SpeedDimensions returns the dimensions the speed view keeps, in config order.
func (d *Dataset) SpeedDimensions() []string {
	if len(d.SpeedConf.Dimensions) == 0 {
		return d.DimensionNames()
	}
	var out []string
	for _, n := range d.DimensionNames() {
		if slices.Contains(d.SpeedConf.Dimensions, n) {
			out = append(out, n)
		}
	}
	return out
}

// GroupingSets returns the grouping sets the batch layer stores per day, each in config order
// and without repeats: the day's total (empty set), each dimension alone, every extra set from
// batch.grouping_sets, and all dimensions together.
func (d *Dataset) GroupingSets() [][]string {
	dims := d.DimensionNames()
	sets := [][]string{{}}
	for _, n := range dims {
		sets = append(sets, []string{n})
	}
	for _, extra := range d.BatchConf.GroupingSets {
		sets = append(sets, d.Ordered(extra))
	}
	sets = append(sets, dims)
	var out [][]string
	seen := map[string]bool{}
	for _, s := range sets {
		k := GroupingName(s)
		if !seen[k] {
			seen[k] = true
			out = append(out, s)
		}
	}
	return out
}

// Ordered returns the given dimension names in config order, without repeats and unknowns.
func (d *Dataset) Ordered(names []string) []string {
	out := []string{}
	for _, n := range d.DimensionNames() {
		if slices.Contains(names, n) {
			out = append(out, n)
		}
	}
	return out
}

// GroupingViewSuffix is what names a grouping set's own view after <ds>_lambda_ (and
// <ds>_lambda_hourly_): "total" for the day's total, "by_" and the dimensions in config order
// joined by underscores otherwise ("by_country", "by_event_country_device").
func GroupingViewSuffix(set []string) string {
	if len(set) == 0 {
		return "total"
	}
	return "by_" + strings.Join(set, "_")
}

// GroupingName is the value of the grouping column for a set of dimensions given in config
// order: their names joined by commas, "" for the day's total.
func GroupingName(set []string) string { return strings.Join(set, ",") }
