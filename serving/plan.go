package serving

import (
	"slices"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
	"github.com/lambda-platform/lambda/shared/metric"
	"github.com/lambda-platform/lambda/shared/schema"
)

// Sources of a row or a range.
const (
	SourceBatch = "batch" // written by the batch layer: <ds>_daily, <ds>_hourly, rewritten <ds>_speed
	SourceSpeed = "speed" // <ds>_speed after the boundary, as the speed layer wrote it
	SourceRaw   = "raw"   // deduplicated <ds>_raw
	SourceMixed = "mixed" // a row combining several sources
	SourceNone  = "none"  // a range no source covers
)

// SourceRange says which source answers [From, To).
type SourceRange struct {
	From   time.Time `json:"from"`
	To     time.Time `json:"to"`
	Source string    `json:"source"`
	// Table is the table read: daily, hourly, hourly_rest, speed, speed_hourly or raw.
	Table string `json:"table,omitempty"`
	// Grouping is the grouping set read from <ds>_daily, <ds>_hourly, <ds>_hourly_rest or
	// <ds>_speed_hourly.
	Grouping *string `json:"grouping,omitempty"`
	Exact    bool    `json:"exact"`
}

// State is what the planner needs to know of a dataset's layers, read once per request.
type State struct {
	// Watermark is the persisted boundary day (zero: none): the planner switches from the
	// batch tables to <ds>_speed at its end.
	Watermark time.Time
	// Effective is the exact watermark, never past Watermark (zero: none): every day up to it
	// with raw rows has a successful run that read every row. meta.batch_watermark reports it.
	Effective time.Time
	// Dirty lists the days whose raw rows changed after their newest successful run (see
	// shared/ledger). Before the boundary they are still read from the batch tables (late rows
	// reach neither those nor speed until the rerun, and they are exact for the rest), flagged
	// exact:false.
	Dirty []time.Time
	// Unrun lists the days up to the boundary with raw rows and no successful run (a backfill
	// of older history): the batch tables hold nothing for them, so they are read from raw.
	Unrun []time.Time
	// Runs maps a day to its newest successful run.
	Runs map[time.Time]Run
	// SpeedOldest is the oldest minute held by <ds>_speed (zero: empty).
	SpeedOldest time.Time
	// SpeedWatermark is how far the speed layer has consumed (zero: nothing): what raw holds
	// before it is complete (late data aside), after it raw may still be missing records.
	SpeedWatermark time.Time
	// Sets maps days before the boundary to the grouping sets <ds>_daily holds for them (a
	// day keeps the sets of the configuration its run had). Nil, or a day missing: the
	// configuration's sets.
	Sets map[time.Time][]string
	// Rollups maps the days after the boundary to their newest rollup into
	// <ds>_speed_hourly: hour and coarser buckets read its current hours (Rollup.Valid).
	Rollups map[time.Time]ledger.Rollup
	// Rests maps recent sealed days to the run whose hours their rows of <ds>_hourly_rest come
	// from (of the table's layout; ledger.Rest): a part of a bucket that runs from a whole hour
	// of such a day to its end reads them while the run is the day's newest.
	Rests map[time.Time]string
}

// Run is the newest successful batch run of a day.
type Run struct {
	ID string
	// Rows is the number of rows the run wrote to <ds>_daily, Hourly to <ds>_hourly and Speed
	// to the day's rewritten <ds>_speed partition; Read the raw rows it read; RawRows what raw
	// holds for the day now.
	Rows, Hourly, Speed, Read, RawRows uint64
}

// SQL is one statement with its bound arguments.
type SQL struct {
	Text string
	Args []any
	// Unsorted: the statement returns its branches' rows side by side, each branch sorted and
	// cut to the page (a flat statement): run sorts them and cuts the whole.
	Unsorted bool
}

// Plan is the SQL of one query and what it reads.
type Plan struct {
	Sources  []SourceRange
	Complete bool
	// Batch answers the parts before the boundary and Speed those after it; their rows never
	// share a bucket, so they are computed apart and the batch side may be cached. When a
	// bucket straddles the boundary, All answers everything at once instead. Nil: no such part.
	Batch, Speed, All *SQL
	// BatchFrom and BatchTo are the days the batch side reads.
	BatchFrom, BatchTo time.Time
	// Boundary is where the batch side ends: a row of a bucket before it is the batch side's.
	Boundary time.Time
}

// Both is the two sides of a split plan as one statement, nil unless the plan has both: the
// UNION ALL of their SELECTs, each ordered and cut to the page itself (or flat). No bucket holds
// rows of both sides, so a row's bucket (before Boundary or not) says its side.
func (pl *Plan) Both() *SQL {
	if pl.Batch == nil || pl.Speed == nil {
		return nil
	}
	return &SQL{Text: pl.Batch.Text + "\nUNION ALL\n" + pl.Speed.Text, Args: append(slices.Clone(pl.Batch.Args), pl.Speed.Args...)}
}

// Statements returns the plan's statements by name: "batch", "speed" or "all", and "both"
// (Both).
func (pl *Plan) Statements() map[string]*SQL {
	out := map[string]*SQL{}
	for name, q := range map[string]*SQL{"batch": pl.Batch, "speed": pl.Speed, "all": pl.All, "both": pl.Both()} {
		if q != nil {
			out[name] = q
		}
	}
	return out
}

// Planner turns checked queries into SQL.
type Planner struct {
	g   *schema.Generator
	cfg *config.Config
}

// NewPlanner returns a planner for the configuration's database.
func NewPlanner(cfg *config.Config) *Planner { return &Planner{g: schema.NewGenerator(cfg), cfg: cfg} }

func maxT(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minT(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// boundary is the end of the persisted boundary day in the dataset's zone loc, zero when no
// day is covered.
func boundary(st *State, loc *time.Location) time.Time {
	if st.Watermark.IsZero() {
		return time.Time{}
	}
	return ledger.DayEnd(st.Watermark, loc)
}

// BatchDays returns the days [from, to) a query reads before the batch boundary (from == to:
// none): the grouping sets the batch tables hold for them are read before planning.
func (p *Planner) BatchDays(q *Query, st *State) (from, to time.Time) {
	loc := q.DS.Location()
	end := minT(q.To, boundary(st, loc))
	if !q.From.Before(end) {
		return time.Time{}, time.Time{}
	}
	return ledger.DayIn(q.From, loc), ledger.DayIn(end.Add(-time.Nanosecond), loc).AddDate(0, 0, 1)
}

// PlanWhole is Plan with every part in one statement (All), as a tool that compares the API
// with one hand-run query needs it.
func (p *Planner) PlanWhole(q *Query, st *State, now time.Time) (*Plan, *APIError) {
	pl, err := p.Plan(q, st, now)
	if err != nil || pl.All != nil || pl.Batch == nil || pl.Speed == nil {
		return pl, err
	}
	dec, _ := p.Decide(q, st, now)
	pl.All, pl.Batch, pl.Speed = p.query(q, shape{states: dec.States}, append(dec.Side(true), dec.Side(false)...)), nil, nil
	return pl, nil
}

// Plan applies the merge rule (Decide) to q and builds its SQL.
func (p *Planner) Plan(q *Query, st *State, now time.Time) (*Plan, *APIError) {
	dec, apiErr := p.Decide(q, st, now)
	if apiErr != nil {
		return nil, apiErr
	}
	pl := &Plan{Complete: dec.Complete, Boundary: dec.Boundary}
	for _, pt := range dec.Parts {
		src := pt.SourceRange
		if pt.Table == TableDaily || pt.Table == TableHourly || pt.Table == TableSpeedHourly || pt.Table == TableHourlyRest {
			g := pt.grouping
			src.Grouping = &g
		}
		pl.Sources = append(pl.Sources, src)
	}
	sh := shape{states: dec.States}
	batch, speed := dec.Side(true), dec.Side(false)
	if len(batch) > 0 {
		loc := q.DS.Location()
		pl.BatchFrom, pl.BatchTo = ledger.DayIn(batch[0].From, loc), ledger.DayIn(batch[len(batch)-1].To.Add(-time.Nanosecond), loc).AddDate(0, 0, 1)
	}
	switch {
	case len(batch) > 0 && len(speed) > 0 && !dec.Split:
		pl.All = p.query(q, sh, append(batch, speed...))
	default:
		// Each statement carries states only if one of its own buckets combines parts.
		pl.Batch = p.query(q, shape{states: q.combines(batch)}, batch)
		pl.Speed = p.query(q, shape{states: q.combines(speed)}, speed)
	}
	return pl, nil
}

func daySet(days []time.Time) map[time.Time]bool {
	m := make(map[time.Time]bool, len(days))
	for _, d := range days {
		m[ledger.DayOf(d)] = true
	}
	return m
}

// rawTooOld is the refusal of a range that needs raw events from before the oldest day raw
// keeps.
func rawTooOld(from, oldest time.Time) *APIError {
	return badRequest(CodeRawRetention, "from", "the range needs raw events from %s, but raw keeps events from %s on only (raw_retention)", from.Format(time.RFC3339), oldest.Format("2006-01-02"))
}

// speedHasDims reports whether the speed view keeps every dimension the query needs.
func (p *Planner) speedHasDims(q *Query) bool {
	sd := q.DS.SpeedDimensions()
	for _, d := range q.neededDims() {
		if !slices.Contains(sd, d) {
			return false
		}
	}
	return true
}

// neededDims are the requested and filtered dimensions.
func (q *Query) neededDims() []string {
	out := slices.Clone(q.Dimensions)
	for _, f := range q.Filters {
		if !slices.Contains(out, f.Dimension) {
			out = append(out, f.Dimension)
		}
	}
	return out
}

// hasSketch reports whether a requested metric is a distinct count or a quantile, which roll
// up only approximately.
func (q *Query) hasSketch() bool {
	return slices.ContainsFunc(q.Specs, func(s metric.Spec) bool { return !s.ExactRollup() })
}

// smallestCover returns the set with the fewest dimensions that holds every one of dims, nil
// when none does.
func smallestCover(sets [][]string, dims []string) []string {
	var best []string
	for _, s := range sets {
		if covers(s, dims) && (best == nil || len(s) < len(best)) {
			best = s
		}
	}
	return best
}

func covers(set, dims []string) bool {
	for _, d := range dims {
		if !slices.Contains(set, d) {
			return false
		}
	}
	return true
}
