package serving

import (
	"context"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/ledger"
)

// Freshness is one dataset's entry of GET /api/v1/freshness.
type Freshness struct {
	Dataset                 string             `json:"dataset"`
	SpeedWatermark          *time.Time         `json:"speed_watermark"`
	LagSeconds              float64            `json:"lag_seconds"`
	Partitions              []ledger.Partition `json:"partitions"`
	BatchWatermark          *string            `json:"batch_watermark"`
	PersistedBatchWatermark *string            `json:"persisted_batch_watermark"`
	// PendingCorrections are the days waiting for a batch run: dirty (late rows) or unrun.
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
		f.Partitions = []ledger.Partition{}
	}
	if !st.SpeedWatermark.IsZero() {
		w := st.SpeedWatermark
		f.SpeedWatermark, f.LagSeconds = &w, max(0, now.Sub(w).Seconds())
	}
	f.PendingCorrections = st.pending()
	runs, err := ledger.LastRuns(ctx, s.conn, s.cfg.ClickHouse.Database, ds.Name, freshnessRuns)
	if err != nil {
		return nil, err
	}
	for _, r := range runs {
		f.LastRuns = append(f.LastRuns, RunInfo{RunID: r.RunID, Day: r.Day.Format(time.DateOnly), Status: r.Status, At: r.At,
			RowsRaw: r.RowsRead, RowsOut: r.RowsOut, Error: r.Error, Duration: r.Duration().Seconds()})
	}
	drift, err := ledger.ReadDrift(ctx, s.conn, s.cfg.ClickHouse.Database, ds.Name, now.AddDate(0, 0, -freshnessDriftDays))
	if err != nil {
		return nil, err
	}
	for _, r := range drift {
		f.Drift = append(f.Drift, DriftRow{Day: r.Day.Format(time.DateOnly), Metric: r.Metric, SpeedValue: r.Speed, ExactValue: r.Exact, RelError: r.RelError})
	}
	return f, nil
}
