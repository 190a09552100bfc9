// Package metric is the metric catalogue: one definition per metric type, compiled three ways.
//
// For every type it gives the speed layer's -State expression and column type, the batch
// layer's exact expression and column type, and the serving layer's merge and roll-up
// expressions, and says what can be added up. Every layer takes its SQL fragments from here, so
// a metric means the same thing in the speed view, the batch view and the API.
package metric

import (
	"fmt"
	"strconv"
	"strings"
)

// Type is a metric type.
type Type string

// The metric types.
const (
	Count    Type = "count"
	Sum      Type = "sum"
	Min      Type = "min"
	Max      Type = "max"
	Avg      Type = "avg"
	Uniq     Type = "uniq"
	Quantile Type = "quantile"
)

// Types lists every metric type in documentation order.
var Types = []Type{Count, Sum, Min, Max, Avg, Uniq, Quantile}

// Known reports whether t is a metric type.
func Known(t string) bool {
	for _, k := range Types {
		if string(k) == t {
			return true
		}
	}
	return false
}

// Spec is one configured metric with the raw column it reads.
type Spec struct {
	Name   string  // the metric's name: its column in <ds>_speed and <ds>_daily
	Type   Type    //
	Column string  // the <ds>_raw column it reads; empty for count
	Level  float64 // quantile level
	// Decimals, for a sum, makes it exact to that many decimals (money): each value is rounded
	// to them and summed as an integer of that scale in every state and exact expression, and
	// the value is a Decimal(38, Decimals), with no float noise. 0: a Float64 sum.
	Decimals int
}

// decimal reports whether the metric is an exact decimal sum.
func (s Spec) decimal() bool { return s.Type == Sum && s.Decimals > 0 }

// scale is 10^Decimals as a literal.
func (s Spec) scale() string { return "1" + strings.Repeat("0", s.Decimals) }

// scaled is a number as an integer of the metric's scale: 12.34 with 2 decimals is 1234. round
// first: toDecimal of a float truncates (0.29 is 0.28999… and would become 0.28).
func (s Spec) scaled(arg string) string {
	return fmt.Sprintf("toInt64(round(%s * %s))", arg, s.scale())
}

// unscaled turns a sum of scaled integers into the Decimal value: 1234 is 12.34.
func (s Spec) unscaled(expr string) string {
	return fmt.Sprintf("toDecimal128(%s, %d) / %s", expr, s.Decimals, s.scale())
}

// NumberType is the raw column type of a numeric field: missing values are NULL, so that
// avg, min and max skip them instead of counting zeros.
const NumberType = "Nullable(Float64)"

// KeyType is the raw column type of a distinct-count field (numbers are rendered as strings).
const KeyType = "String"

// RawType is the type of the raw column the metric reads ("" for count).
func (s Spec) RawType() string {
	switch s.Type {
	case Count:
		return ""
	case Uniq:
		return KeyType
	default:
		return NumberType
	}
}

// fn is the ClickHouse aggregate function name with parameters, e.g. "quantile(0.95)".
func (s Spec) fn() string {
	if s.Type == Quantile {
		return "quantile(" + s.levelString() + ")"
	}
	return string(s.Type)
}

func (s Spec) levelString() string { return strconv.FormatFloat(s.Level, 'g', -1, 64) }

func (s Spec) args() string {
	if s.Type == Count {
		return ""
	}
	return quoteIdent(s.Column)
}

// StateType is the AggregateFunction column type of the speed view and of the daily sketch.
// Numeric states are over Float64, not Nullable(Float64): ClickHouse 18.16 strips Nullable from
// state types and current versions keep it, so NULLs are skipped with -If instead (StateExpr).
func (s Spec) StateType() string {
	switch s.RawType() {
	case "":
		return "AggregateFunction(count)"
	case KeyType:
		return fmt.Sprintf("AggregateFunction(%s, String)", s.fn())
	}
	if s.decimal() {
		return "AggregateFunction(sum, Int64)"
	}
	return fmt.Sprintf("AggregateFunction(%s, Float64)", s.fn())
}

// StateExpr is the -State expression over raw columns, e.g.
// "sumStateIf(toFloat64(assumeNotNull(value)), isNotNull(value))". The argument is cast to the
// state's type: ClickHouse 18.16 pushes an INSERT … SELECT block to materialized views before
// converting it to the table's types, and the state type must not depend on how rows came in.
func (s Spec) StateExpr() string {
	name := string(s.Type)
	if s.Type == Quantile {
		name = "quantile"
	}
	params := ""
	if s.Type == Quantile {
		params = "(" + s.levelString() + ")"
	}
	switch s.RawType() {
	case "":
		return "countState()"
	case KeyType:
		// A missing key is '' in raw: it adds nothing, never a distinct ''.
		return fmt.Sprintf("%sStateIf%s(toString(%s), toString(%s) != '')", name, params, s.args(), s.args())
	}
	if s.decimal() {
		return fmt.Sprintf("sumStateIf(%s, isNotNull(%s))", s.scaled("assumeNotNull("+s.args()+")"), s.args())
	}
	return fmt.Sprintf("%sStateIf%s(toFloat64(assumeNotNull(%s)), isNotNull(%s))", name, params, s.args(), s.args())
}

// MergeExpr turns a state column into the metric's value, e.g. "uniqMerge(users)". Over no
// values a sum, min or max state gives 0, which is not NULL: values of those read from states
// go through ValueFromStates, which consults the presence state. avg and quantile give NaN,
// which Cast turns into NULL.
func (s Spec) MergeExpr(stateCol string) string {
	if s.Type == Quantile {
		return fmt.Sprintf("quantileMerge(%s)(%s)", s.levelString(), stateCol)
	}
	if s.decimal() {
		return s.unscaled("sumMerge(" + stateCol + ")")
	}
	return fmt.Sprintf("%sMerge(%s)", s.Type, stateCol)
}

// NeedsPresence reports whether the metric's value from a state cannot tell "no values" from a
// value (sum, min and max give 0 over nothing): read from states, it needs the presence state
// of its column (PresenceColumn) to be NULL where no value exists.
func (s Spec) NeedsPresence() bool { return s.Type == Sum || s.Type == Min || s.Type == Max }

// PresenceColumn is the name of the state column counting the present (non-NULL) values of a
// numeric raw column in a table of states (<ds>_speed). Names starting with an underscore are
// never metric or dimension names.
func PresenceColumn(column string) string { return "_n_" + column }

// PresenceType is the column type of a presence state.
const PresenceType = "AggregateFunction(sum, UInt64)"

// PresenceStateExpr is the presence state over a numeric raw column.
func PresenceStateExpr(column string) string {
	c := quoteIdent(column)
	return fmt.Sprintf("sumState(toUInt64(isNotNull(%s)))", c)
}

// ValueFromStates is the metric's value merged from its state column and, for the metrics that
// need one, the presence state column of its raw column: NULL where no value exists, as the
// exact expression over raw gives. It is cast to ValueType.
func (s Spec) ValueFromStates(stateCol, presenceCol string) string {
	if !s.NeedsPresence() {
		return s.Cast(s.MergeExpr(stateCol))
	}
	return fmt.Sprintf("if(sumMerge(%s) = 0, NULL, %s)", presenceCol, s.Cast(s.MergeExpr(stateCol)))
}

// ValueColumn is the name of the column holding the metric's value beside its state in a table
// of states with one row per bucket (<ds>_speed_hourly): a row that is its bucket's only row
// is read as this number instead of finalizing its state.
func ValueColumn(name string) string { return "_v_" + name }

// FinalValue is the metric's value from one row's state column (and presence state column, for
// the metrics that need one), as ValueFromStates gives over that row alone: the DEFAULT of the
// metric's ValueColumn, computed when the row is written.
func (s Spec) FinalValue(stateCol, presenceCol string) string {
	final := "finalizeAggregation(" + stateCol + ")"
	if s.decimal() {
		final = s.unscaled(final)
	}
	if !s.NeedsPresence() {
		return s.Cast(final)
	}
	return fmt.Sprintf("if(finalizeAggregation(%s) = 0, NULL, %s)", presenceCol, s.Cast(final))
}

// MergeStateExpr merges state columns into one state, for combining sources before the final
// merge, e.g. "uniqMergeState(users)".
func (s Spec) MergeStateExpr(stateCol string) string {
	if s.Type == Quantile {
		return fmt.Sprintf("quantileMergeState(%s)(%s)", s.levelString(), stateCol)
	}
	return fmt.Sprintf("%sMergeState(%s)", s.Type, stateCol)
}

// ExactExpr is the exact aggregate over raw columns used by the batch layer and by exact raw
// queries, e.g. "uniqExact(user_id)".
func (s Spec) ExactExpr() string {
	switch s.Type {
	case Count:
		return "count()"
	case Uniq:
		return fmt.Sprintf("uniqExactIf(%s, %s != '')", s.args(), s.args())
	case Quantile:
		return fmt.Sprintf("quantileExact(%s)(%s)", s.levelString(), s.args())
	case Sum:
		if s.decimal() {
			return s.unscaled("sum(" + s.scaled(s.args()) + ")")
		}
		return fmt.Sprintf("sum(%s)", s.args())
	default:
		return fmt.Sprintf("%s(%s)", s.Type, s.args())
	}
}

// ExactStateExpr is the -State of the exact aggregate over raw columns for the metrics whose
// exact value cannot be combined from partial values (uniq and quantile: uniqExactStateIf over
// the present keys, quantileExactStateIf over the present values): ExactMergeExpr over such
// states of any partition of the rows gives what ExactExpr gives over all of them (a
// quantile's NaN over no values is NULL after Cast). It is "" for the other metrics, whose
// partial values combine with Combine. The batch layer computes a day in two levels with it:
// states per hour and all dimensions, merged into every grouping set.
func (s Spec) ExactStateExpr() string {
	switch s.Type {
	case Uniq:
		return fmt.Sprintf("uniqExactStateIf(%s, %s != '')", s.args(), s.args())
	case Quantile:
		return fmt.Sprintf("quantileExactStateIf(%s)(toFloat64(assumeNotNull(%s)), isNotNull(%s))", s.levelString(), s.args(), s.args())
	}
	return ""
}

// ExactMergeExpr merges states of ExactStateExpr into the exact value, e.g.
// "uniqExactMerge(c)"; "" where ExactStateExpr is "".
func (s Spec) ExactMergeExpr(stateCol string) string {
	switch s.Type {
	case Uniq:
		return fmt.Sprintf("uniqExactMerge(%s)", stateCol)
	case Quantile:
		return fmt.Sprintf("quantileExactMerge(%s)(%s)", s.levelString(), stateCol)
	}
	return ""
}

// ExactRank is the 0-based rank, among the n present values of a group sorted ascending, of the
// value ExactExpr returns for a quantile: ClickHouse's quantileExact takes the element at
// size_t(level * n), the last one for level >= 1. The batch layer selects it itself when a
// group's values do not fit in memory at once. The SQL form is ExactRankExpr.
func (s Spec) ExactRank(n uint64) uint64 {
	if n == 0 {
		return 0
	}
	if s.Level >= 1 {
		return n - 1
	}
	return uint64(s.Level * float64(n))
}

// ExactRankExpr is ExactRank in SQL over an expression giving n (UInt64, n > 0).
func (s Spec) ExactRankExpr(n string) string {
	if s.Level >= 1 {
		return fmt.Sprintf("(%s - 1)", n)
	}
	return fmt.Sprintf("toUInt64(%s * %s)", s.levelString(), n)
}

// ValueType is the column type of the metric's value in <ds>_daily, and the type every query
// casts the metric to, so that UNION ALL of sources never mixes types.
func (s Spec) ValueType() string {
	switch {
	case s.Type == Count || s.Type == Uniq:
		return "UInt64"
	case s.decimal():
		return fmt.Sprintf("Nullable(Decimal(38, %d))", s.Decimals)
	default:
		return NumberType
	}
}

// Cast wraps expr so that it has ValueType. For avg and quantile, NaN (what their states give
// over no values) becomes NULL, as every source gives NULL where no value exists.
func (s Spec) Cast(expr string) string {
	switch {
	case s.ValueType() == "UInt64":
		return "toUInt64(" + expr + ")"
	case s.decimal():
		return fmt.Sprintf("toNullable(toDecimal128(%s, %d))", expr, s.Decimals)
	case s.Type == Avg || s.Type == Quantile:
		return fmt.Sprintf("if(isNaN(toFloat64(%s)), NULL, toNullable(toFloat64(%s)))", expr, expr)
	default:
		return "toNullable(toFloat64(" + expr + "))"
	}
}

// Additive reports whether values of disjoint parts add up to the value of the whole.
func (s Spec) Additive() bool { return s.Type == Count || s.Type == Sum }

// ExactRollup reports whether the metric re-aggregates exactly across rows (days, dimension
// values): count and sum add, min and max take the extreme, avg merges its (sum, count) state.
// Distinct counts and quantiles do not.
func (s Spec) ExactRollup() bool { return s.Type != Uniq && s.Type != Quantile }

// HasDailyState reports whether <ds>_daily keeps a mergeable state for the metric (column
// StateColumn), needed to roll it up beyond the stored grouping sets.
func (s Spec) HasDailyState() bool {
	return s.Type == Avg || s.Type == Uniq || s.Type == Quantile
}

// EmptyStateExpr is an empty state of StateType that reads no column (the -State function
// over an empty array), for the metrics with a daily state (HasDailyState): what a row that is
// its bucket's only row carries in place of its stored state, which is never merged then and
// costs more to read than the rest of the row.
func (s Spec) EmptyStateExpr() string {
	name, arg := string(s.Type)+"State", "emptyArrayFloat64()"
	if s.Type == Quantile {
		name = "quantileState(" + s.levelString() + ")"
	}
	if s.RawType() == KeyType {
		arg = "emptyArrayString()"
	}
	return fmt.Sprintf("arrayReduce('%s', %s)", name, arg)
}

// StateColumn is the name of the metric's state column in <ds>_daily.
func (s Spec) StateColumn() string { return s.Name + "_state" }

// Rollup re-aggregates the metric over rows of <ds>_daily into its value: sum(events),
// max(top), avgMerge(avg_state), uniqMerge(users_state).
func (s Spec) Rollup() string {
	switch s.Type {
	case Count, Sum:
		return fmt.Sprintf("sum(%s)", quoteIdent(s.Name))
	case Min, Max:
		return fmt.Sprintf("%s(%s)", s.Type, quoteIdent(s.Name))
	default:
		return s.MergeExpr(quoteIdent(s.StateColumn()))
	}
}

// Combine is the aggregate that combines partial values of the metric computed from disjoint
// sources (ValueType each): sum for count and sum, min, max. Metrics for which it returns ""
// combine through states (see StateExpr, MergeStateExpr).
func (s Spec) Combine(col string) string {
	switch s.Type {
	case Count, Sum:
		return fmt.Sprintf("sum(%s)", col)
	case Min, Max:
		return fmt.Sprintf("%s(%s)", s.Type, col)
	}
	return ""
}

// Ratio is the one derived metric type: numerator / denominator, two metrics of the same
// dataset. It is stored nowhere: every reader computes it from the two merged values of a row
// (never by adding up ratios), so it is exact exactly where both parts are.
const Ratio Type = "ratio"

// RatioExpr is the value of a ratio over two value expressions (ValueType each): NULL where the
// denominator is 0 or NULL, or the numerator NULL. nullIf, not if(d = 0, NULL, …): ClickHouse
// 18.16 refuses a Nullable inside the Nullable that if(…, NULL, …) makes.
func RatioExpr(num, den string) string {
	return fmt.Sprintf("toFloat64(%s) / nullIf(toFloat64(%s), 0)", num, den)
}

// RatioType is the column type of a ratio's value.
const RatioType = NumberType

// quoteIdent quotes a ClickHouse identifier. Names are validated to [a-z][a-z0-9_]* by the
// config, so this only guards against keywords.
func quoteIdent(s string) string { return "`" + s + "`" }

// QuoteIdent quotes a ClickHouse identifier that the configuration validated.
func QuoteIdent(s string) string { return quoteIdent(s) }
