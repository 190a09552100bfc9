package metric_test

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/metric"
)

func specs() []metric.Spec {
	return []metric.Spec{
		{Name: "n", Type: metric.Count},
		{Name: "s", Type: metric.Sum, Column: "v"},
		{Name: "lo", Type: metric.Min, Column: "v"},
		{Name: "hi", Type: metric.Max, Column: "v"},
		{Name: "mean", Type: metric.Avg, Column: "v"},
		{Name: "u", Type: metric.Uniq, Column: "k"},
		{Name: "p", Type: metric.Quantile, Column: "v", Level: 0.5},
	}
}

func TestFragments(t *testing.T) {
	f := func(s metric.Spec, state, stateType, merge, exact, rollup string, additive, exactRollup bool) {
		t.Helper()
		if got := s.StateExpr(); got != state {
			t.Errorf("%s StateExpr %q, want %q", s.Type, got, state)
		}
		if got := s.StateType(); got != stateType {
			t.Errorf("%s StateType %q, want %q", s.Type, got, stateType)
		}
		if got := s.MergeExpr("c"); got != merge {
			t.Errorf("%s MergeExpr %q, want %q", s.Type, got, merge)
		}
		if got := s.ExactExpr(); got != exact {
			t.Errorf("%s ExactExpr %q, want %q", s.Type, got, exact)
		}
		if got := s.Rollup(); got != rollup {
			t.Errorf("%s Rollup %q, want %q", s.Type, got, rollup)
		}
		if s.Additive() != additive || s.ExactRollup() != exactRollup {
			t.Errorf("%s additive %v exact rollup %v", s.Type, s.Additive(), s.ExactRollup())
		}
	}
	sp := specs()
	f(sp[0], "countState()", "AggregateFunction(count)", "countMerge(c)", "count()", "sum(`n`)", true, true)
	f(sp[1], "sumStateIf(toFloat64(assumeNotNull(`v`)), isNotNull(`v`))", "AggregateFunction(sum, Float64)", "sumMerge(c)", "sum(`v`)", "sum(`s`)", true, true)
	f(sp[3], "maxStateIf(toFloat64(assumeNotNull(`v`)), isNotNull(`v`))", "AggregateFunction(max, Float64)", "maxMerge(c)", "max(`v`)", "max(`hi`)", false, true)
	f(sp[4], "avgStateIf(toFloat64(assumeNotNull(`v`)), isNotNull(`v`))", "AggregateFunction(avg, Float64)", "avgMerge(c)", "avg(`v`)", "avgMerge(`mean_state`)", false, true)
	f(sp[5], "uniqState(toString(`k`))", "AggregateFunction(uniq, String)", "uniqMerge(c)", "uniqExact(`k`)", "uniqMerge(`u_state`)", false, false)
	f(sp[6], "quantileStateIf(0.5)(toFloat64(assumeNotNull(`v`)), isNotNull(`v`))", "AggregateFunction(quantile(0.5), Float64)", "quantileMerge(0.5)(c)", "quantileExact(0.5)(`v`)", "quantileMerge(0.5)(`p_state`)", false, false)
}

// equivalence builds the statements that store states of every metric in a table of the
// catalogue's StateType, merge them back, and compute the exact values over the same rows.
func asFloat(expr string) string { return "toFloat64(ifNull(" + expr + ", nan))" }

func equivalence(db string) (setup []string, merged, exact string) {
	sp := specs()
	var cols, states, merges, exacts []string
	for _, s := range sp {
		cols = append(cols, fmt.Sprintf("`%s` %s", s.Name, s.StateType()))
		states = append(states, s.StateExpr()+" AS `"+s.Name+"`")
		merges = append(merges, asFloat(s.Cast(s.MergeExpr("`"+s.Name+"`"))))
		exacts = append(exacts, asFloat(s.Cast(s.ExactExpr())))
	}
	src := "(SELECT if(number % 5 = 0, NULL, toNullable(toFloat64(number % 97))) AS v, toString(number % 13) AS k, number % 3 AS g FROM system.numbers LIMIT 1000)"
	setup = []string{
		"CREATE DATABASE IF NOT EXISTS " + db,
		fmt.Sprintf("CREATE TABLE %s.st (g UInt64, %s) ENGINE = AggregatingMergeTree ORDER BY g", db, strings.Join(cols, ", ")),
		fmt.Sprintf("INSERT INTO %s.st SELECT g, %s FROM %s GROUP BY g", db, strings.Join(states, ", "), src),
	}
	merged = fmt.Sprintf("SELECT %s FROM %s.st", strings.Join(merges, ", "), db)
	exact = fmt.Sprintf("SELECT %s FROM %s", strings.Join(exacts, ", "), src)
	return setup, merged, exact
}

// TestStatesMergeToExact checks on ClickHouse 18.16 and on current ClickHouse (chDB) that the
// states of every metric type, stored in columns of the catalogue's types and merged across
// rows, give the exact values (NULLs skipped), to a tolerance for the quantile sketch.
func TestStatesMergeToExact(t *testing.T) {
	cfg := chtest.Config(t, nil)
	conn := chtest.New(t, cfg)
	ctx := context.Background()
	db := "`" + cfg.ClickHouse.Database + "`"
	setup, merged, exact := equivalence(db)
	for _, s := range setup {
		if err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("18.16: %s: %v", s, err)
		}
	}
	read := func(q string) []float64 {
		out := make([]float64, len(specs()))
		dest := make([]any, len(out))
		for i := range out {
			dest[i] = &out[i]
		}
		if err := conn.QueryRow(ctx, q).Scan(dest...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return out
	}
	compare(t, "18.16", read(merged), read(exact))

	res := chtest.RequireChDB(t, append(setup, merged, exact))
	parse := func(s string) []float64 {
		var out []float64
		for _, f := range strings.Fields(s) {
			v, err := strconv.ParseFloat(f, 64)
			if err != nil {
				t.Fatalf("chdb value %q: %v", f, err)
			}
			out = append(out, v)
		}
		return out
	}
	if len(res) == len(setup)+2 {
		compare(t, "chDB", parse(res[len(setup)].Out), parse(res[len(setup)+1].Out))
	}
}

func compare(t *testing.T, where string, merged, exact []float64) {
	t.Helper()
	sp := specs()
	if len(merged) != len(sp) || len(exact) != len(sp) {
		t.Fatalf("%s: merged %v exact %v", where, merged, exact)
	}
	for i, s := range sp {
		tol := 1e-9 * math.Max(1, math.Abs(exact[i]))
		if s.Type == metric.Quantile {
			tol = 5
		}
		if math.Abs(merged[i]-exact[i]) > tol {
			t.Errorf("%s: %s merged %v, exact %v", where, s.Type, merged[i], exact[i])
		}
	}
}
