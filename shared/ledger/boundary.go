package ledger

import (
	"context"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// BoundarySQL is a scalar subquery giving a dataset's persisted boundary: the last day read
// from <ds>_daily rather than <ds>_speed (1970-01-01 when none).
func BoundarySQL(db, ds string) string {
	return fmt.Sprintf("(SELECT argMax(watermark, at_us) FROM %s WHERE dataset = %s)", t(db, BatchWatermarks), lit(ds))
}

// Boundary returns a dataset's persisted boundary (a day at UTC midnight), false when no day
// was ever covered.
func Boundary(ctx context.Context, conn driver.Conn, db, ds string) (time.Time, bool, error) {
	q := fmt.Sprintf("SELECT count(), argMax(watermark, at_us) FROM %s WHERE dataset = ?", t(db, BatchWatermarks))
	var n uint64
	var d time.Time
	if err := conn.QueryRow(ctx, q, ds).Scan(&n, &d); err != nil {
		return time.Time{}, false, fmt.Errorf("cannot read the batch boundary of %s: %w", ds, err)
	}
	if n == 0 || d.Year() <= 1970 {
		return time.Time{}, false, nil
	}
	return DayOf(d), true, nil
}

// NextBoundary is where the persisted boundary goes from old (ok: one was persisted) when the
// days are covered up to covered: it never moves back. A day covered once stays on the daily
// side: when late rows make it dirty it is flagged approximate there until its rerun, rather
// than read from <ds>_speed, which never received those rows.
func NextBoundary(old time.Time, ok bool, covered time.Time) time.Time {
	if ok && !covered.After(old) {
		return old
	}
	return covered
}

// AppendBoundary persists a new boundary (zero: none) with the run that made its day exact.
func AppendBoundary(ctx context.Context, conn driver.Conn, db, ds string, day time.Time, runID string, at time.Time, atUS uint64) error {
	if day.IsZero() {
		day = Epoch
	}
	b, err := conn.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO %s (dataset, watermark, run_id, at, at_us)", t(db, BatchWatermarks)))
	if err != nil {
		return fmt.Errorf("cannot insert boundary into %s: %w", BatchWatermarks, err)
	}
	defer b.Close()
	if err := b.Append(ds, day, runID, at, atUS); err != nil {
		return fmt.Errorf("cannot insert boundary into %s: %w", BatchWatermarks, err)
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("cannot insert boundary into %s: %w", BatchWatermarks, err)
	}
	return nil
}
