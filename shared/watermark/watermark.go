// Package watermark reads the two watermarks of a dataset, which the speed and batch layers
// write and every layer reads.
//
// The speed watermark is the minimum over Kafka partitions of the newest committed event time,
// capped at now, where a partition with nothing left to consume counts as now (an idle
// partition must not hold every day open). It comes from speed_flushes, the ledger the speed
// layer writes after every insert and, when idle, as a heartbeat.
//
// The batch watermark is the last exact day: every day up to it that has raw data has a
// successful run and is not dirty. The batch layer computes it and appends it to
// batch_watermarks; Batch reads the newest.
package watermark

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/schema"
)

// Partition is the speed layer's progress on one Kafka partition.
type Partition struct {
	Partition     int32     `json:"partition"`
	Committed     int64     `json:"committed_offset"` // next offset to consume
	HighWatermark int64     `json:"high_watermark"`   // broker's end offset at the last flush
	Lag           int64     `json:"lag"`
	NewestEvent   time.Time `json:"newest_event_time"`
	FlushedAt     time.Time `json:"flushed_at"`
}

// Speed returns the speed watermark of a dataset and the progress per partition. The
// watermark is the zero time when nothing was consumed yet.
func Speed(ctx context.Context, conn driver.Conn, db, ds string, now time.Time) (time.Time, []Partition, error) {
	q := fmt.Sprintf(`SELECT partition, max(last_offset) + 1, argMax(high_watermark, (flushed_at, last_offset)),
    max(max_event_time), max(flushed_at)
FROM %s.%s WHERE dataset = ? GROUP BY partition ORDER BY partition`, schema.Q(db), schema.Q(schema.SpeedFlushes))
	rows, err := conn.Query(ctx, q, ds)
	if err != nil {
		return time.Time{}, nil, fmt.Errorf("cannot read speed progress of %s: %w", ds, err)
	}
	defer rows.Close()
	var parts []Partition
	var wm time.Time
	for rows.Next() {
		var p Partition
		if err := rows.Scan(&p.Partition, &p.Committed, &p.HighWatermark, &p.NewestEvent, &p.FlushedAt); err != nil {
			return time.Time{}, nil, fmt.Errorf("cannot read speed progress of %s: %w", ds, err)
		}
		p.Lag = max(0, p.HighWatermark-p.Committed)
		t := p.NewestEvent
		if p.Lag == 0 || t.After(now) {
			t = now
		}
		if wm.IsZero() || t.Before(wm) {
			wm = t
		}
		parts = append(parts, p)
	}
	return wm.UTC(), parts, rows.Err()
}

// Batch returns the persisted batch watermark of a dataset (the last exact day, at UTC
// midnight) and false when no day is exact yet.
func Batch(ctx context.Context, conn driver.Conn, db, ds string) (time.Time, bool, error) {
	q := fmt.Sprintf("SELECT count(), argMax(watermark, at_us) FROM %s.%s WHERE dataset = ?", schema.Q(db), schema.Q(schema.BatchWatermarks))
	var n uint64
	var d time.Time
	if err := conn.QueryRow(ctx, q, ds).Scan(&n, &d); err != nil {
		return time.Time{}, false, fmt.Errorf("cannot read batch watermark of %s: %w", ds, err)
	}
	if n == 0 || d.Year() <= 1970 {
		return time.Time{}, false, nil
	}
	return time.Date(d.Year(), d.Month(), d.Day(), 0, 0, 0, 0, time.UTC), true, nil
}

// DirtyDays returns the days from since on that hold raw rows ingested after the start of the
// day's last successful batch run minus insertTimeout (an insert that began before the run may
// land after it read). Days without a successful run are not dirty: they are not exact yet.
func DirtyDays(ctx context.Context, conn driver.Conn, db, ds string, since time.Time, insertTimeout time.Duration) ([]time.Time, error) {
	q := fmt.Sprintf(`SELECT day, max(started_at) FROM %s.%s
WHERE dataset = ? AND status = 'succeeded' AND day >= toDate(?) GROUP BY day`, schema.Q(db), schema.Q(schema.BatchRuns))
	rows, err := conn.Query(ctx, q, ds, since.UTC())
	if err != nil {
		return nil, fmt.Errorf("cannot read batch runs of %s: %w", ds, err)
	}
	started := map[time.Time]time.Time{}
	for rows.Next() {
		var d, st time.Time
		if err := rows.Scan(&d, &st); err != nil {
			rows.Close()
			return nil, err
		}
		started[dayOf(d)] = st
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(started) == 0 {
		return nil, nil
	}
	q = fmt.Sprintf(`SELECT toDate(time) AS d, max(_ingested_at) FROM %s.%s
WHERE time >= ? GROUP BY d ORDER BY d`, schema.Q(db), schema.Q(schema.Raw(ds)))
	rows, err = conn.Query(ctx, q, dayOf(since))
	if err != nil {
		return nil, fmt.Errorf("cannot read raw ingestion times of %s: %w", ds, err)
	}
	defer rows.Close()
	var dirty []time.Time
	for rows.Next() {
		var d, ing time.Time
		if err := rows.Scan(&d, &ing); err != nil {
			return nil, err
		}
		st, ok := started[dayOf(d)]
		if ok && ing.After(st.Add(-insertTimeout)) {
			dirty = append(dirty, dayOf(d))
		}
	}
	return dirty, rows.Err()
}

func dayOf(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}
