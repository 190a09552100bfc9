package serving

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
	"github.com/lambda-platform/lambda/shared/watermark"
)

// Freshness is one dataset's entry of GET /api/v1/freshness.
type Freshness struct {
	Dataset                 string                `json:"dataset"`
	SpeedWatermark          *time.Time            `json:"speed_watermark"`
	LagSeconds              float64               `json:"lag_seconds"`
	Partitions              []watermark.Partition `json:"partitions"`
	BatchWatermark          *string               `json:"batch_watermark"`
	PersistedBatchWatermark *string               `json:"persisted_batch_watermark"`
	// PendingCorrections are dirty days waiting for the next batch run.
	PendingCorrections []string   `json:"pending_corrections"`
	LastRuns           []RunInfo  `json:"last_runs"`
	Drift              []DriftRow `json:"drift"`
}

// RunInfo is a batch run's current state.
type RunInfo struct {
	RunID    string    `json:"run_id"`
	Day      string    `json:"day"`
	Status   string    `json:"status"`
	At       time.Time `json:"at"`
	RowsRaw  uint64    `json:"rows_raw"`
	RowsOut  uint64    `json:"rows_out"`
	Error    string    `json:"error,omitempty"`
	Duration float64   `json:"duration_seconds"`
}

// DriftRow is how far the speed view was from the exact value of a sealed day.
type DriftRow struct {
	Day        string   `json:"day"`
	Metric     string   `json:"metric"`
	SpeedValue *float64 `json:"speed_value"`
	ExactValue *float64 `json:"exact_value"`
	RelError   *float64 `json:"rel_error"`
}

const freshnessRuns = 10
const freshnessDriftDays = 7

func (s *Server) freshness(c *gin.Context) {
	ctx, cancel := context.WithTimeout(c.Request.Context(), s.cfg.Serving.QueryTimeout.D())
	defer cancel()
	out := []Freshness{}
	for i := range s.cfg.Datasets {
		f, err := s.datasetFreshness(ctx, &s.cfg.Datasets[i])
		if err != nil {
			s.fail(c, s.dbError(ctx, "cannot read freshness of "+s.cfg.Datasets[i].Name, err))
			return
		}
		out = append(out, *f)
	}
	c.JSON(http.StatusOK, gin.H{"datasets": out})
}

func (s *Server) datasetFreshness(ctx context.Context, ds *config.Dataset) (*Freshness, error) {
	now := s.now().UTC()
	st, err := s.state.get(ctx, ds, now)
	if err != nil {
		return nil, err
	}
	f := &Freshness{Dataset: ds.Name, Partitions: st.Partitions, BatchWatermark: day(st.Effective),
		PersistedBatchWatermark: day(st.Watermark), PendingCorrections: []string{}, LastRuns: []RunInfo{}, Drift: []DriftRow{}}
	if f.Partitions == nil {
		f.Partitions = []watermark.Partition{}
	}
	if !st.SpeedWatermark.IsZero() {
		w := st.SpeedWatermark
		f.SpeedWatermark, f.LagSeconds = &w, max(0, now.Sub(w).Seconds())
	}
	for _, d := range st.Dirty {
		f.PendingCorrections = append(f.PendingCorrections, d.Format("2006-01-02"))
	}
	g := s.planner.g
	rows, err := s.conn.Query(ctx, lastRunsSQL(g), ds.Name)
	if err != nil {
		return nil, fmt.Errorf("cannot read batch runs of %s: %w", ds.Name, err)
	}
	for rows.Next() {
		var r RunInfo
		var d time.Time
		var us int64
		if err := rows.Scan(&r.RunID, &d, &r.Status, &r.At, &r.RowsRaw, &r.RowsOut, &r.Error, &us); err != nil {
			rows.Close()
			return nil, fmt.Errorf("cannot read batch runs of %s: %w", ds.Name, err)
		}
		r.Day, r.Duration = d.Format("2006-01-02"), float64(us)/1e6
		f.LastRuns = append(f.LastRuns, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read batch runs of %s: %w", ds.Name, err)
	}
	rows, err = s.conn.Query(ctx, driftSQL(g, ds.Name), now.AddDate(0, 0, -freshnessDriftDays).Format("2006-01-02"))
	if err != nil {
		return nil, fmt.Errorf("cannot read drift of %s: %w", ds.Name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var r DriftRow
		var d time.Time
		if err := rows.Scan(&d, &r.Metric, &r.SpeedValue, &r.ExactValue, &r.RelError); err != nil {
			return nil, fmt.Errorf("cannot read drift of %s: %w", ds.Name, err)
		}
		r.Day = d.Format("2006-01-02")
		f.Drift = append(f.Drift, r)
	}
	return f, rows.Err()
}

// lastRunsSQL gives the newest runs of a dataset (bound) with their current state.
func lastRunsSQL(g *schema.Generator) string {
	return fmt.Sprintf(`SELECT run_id, any(day), argMax(status, at_us), max(at), argMax(rows_raw, at_us), argMax(rows_out, at_us),
    argMax(error, at_us), toInt64(max(at_us)) - toInt64(min(at_us))
FROM %s WHERE dataset = ? GROUP BY run_id ORDER BY max(at_us) DESC LIMIT %d`, g.T(schema.BatchRuns), freshnessRuns)
}

// driftSQL gives the drift per day and metric from a day on (bound).
func driftSQL(g *schema.Generator, ds string) string {
	return fmt.Sprintf(`SELECT day, metric, argMax(speed_value, at), argMax(exact_value, at), argMax(rel_error, at)
FROM %s WHERE day >= toDate(?) GROUP BY day, metric ORDER BY day DESC, metric`, g.T(schema.Drift(ds)))
}
