package schema

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/lambda-platform/lambda/shared/config"
)

// A dataset's time zone is in the partition key of its <ds>_hourly table
// (toYYYYMMDD(hour, 'America/New_York'); no zone: UTC), so an existing deployment tells its
// zone without any bookkeeping of its own.
var hourlyZoneRE = regexp.MustCompile(`toYYYYMMDD\(hour(?:, '([^']+)')?\)`)

// ErrRefused marks a change Migrate refuses until an option (or an operator) allows it: waiting
// and retrying cannot help (errors.Is(err, ErrRefused)).
var ErrRefused = errors.New("migrate refuses the change")

type refusal struct{ msg string }

func (r refusal) Error() string        { return r.msg }
func (r refusal) Is(target error) bool { return target == ErrRefused }

func refusef(format string, args ...any) error { return refusal{fmt.Sprintf(format, args...)} }

// zoneTables are the tables of a dataset whose rows are cut into the days of its zone, which a
// change of zone empties and rebuilds: the batch's tables, the speed minutes (partitioned by
// local day), raw's day counts, the drift of days, and the rollups of hours (whose records in
// speed_rollups and rest_rollups name the old zone in their layout, and are not read).
func zoneTables(ds string) []string {
	return []string{Daily(ds), Hourly(ds), Speed(ds), RawDays(ds), Drift(ds), SpeedHourly(ds), HourlyRest(ds)}
}

// storedZone reads the zone of a dataset's existing tables ("" when <ds>_hourly does not exist).
func (m *migrator) storedZone(ctx context.Context, ds string) (string, error) {
	rows, err := m.conn.Query(ctx, "SELECT partition_key FROM system.tables WHERE database = ? AND name = ?", m.g.DB, Hourly(ds))
	if err != nil {
		return "", fmt.Errorf("cannot read the partition key of %s: %w", Hourly(ds), err)
	}
	defer rows.Close()
	zone := ""
	for rows.Next() {
		var key string
		if err := rows.Scan(&key); err != nil {
			return "", fmt.Errorf("cannot read the partition key of %s: %w", Hourly(ds), err)
		}
		zone = "UTC"
		if sm := hourlyZoneRE.FindStringSubmatch(key); sm != nil && sm[1] != "" {
			zone = sm[1]
		}
	}
	return zone, rows.Err()
}

// zoneChanges returns the datasets whose configured time zone differs from the zone their
// tables were made in. Without recompute a change is refused: the rows of the old zone's days
// would be read as the new zone's.
func (m *migrator) zoneChanges(ctx context.Context, cfg *config.Config, recompute bool) ([]string, error) {
	var out []string
	for i := range cfg.Datasets {
		d := &cfg.Datasets[i]
		have, err := m.storedZone(ctx, d.Name)
		if err != nil {
			return nil, err
		}
		want := d.Location().String()
		if have == "" || have == want {
			continue
		}
		field := fmt.Sprintf("datasets[%d] (%s).time_zone", i, d.Name)
		switch {
		case m.g.Cluster != "":
			return nil, refusef("%s: %s keeps its days in %s, the config says %s; migrate does not rebuild tables in cluster mode (clickhouse.cluster %q): drop %v and the views %s and %s on every node, delete the dataset's rows of %s and %s, then run migrate (docs/operations.md, \"Changing a dataset's time zone\")",
				field, d.Name, have, want, m.g.Cluster, zoneTables(d.Name), SpeedMV(d.Name), RawDaysMV(d.Name), BatchRuns, BatchWatermarks)
		case !recompute:
			return nil, refusef("%s: %s keeps its days in %s, the config says %s: its daily, hourly and speed rows would mix the two zones' days; rerun migrate with --recompute-zone to rebuild them in %s from raw (days raw no longer holds are lost), after which the batch layer recomputes every day (docs/operations.md, \"Changing a dataset's time zone\")",
				field, d.Name, have, want, want)
		}
		m.log.Warn("recomputing a dataset in its new time zone", "dataset", d.Name, "from", have, "to", want)
		out = append(out, d.Name)
	}
	return out, nil
}

// recomputeZone empties what a dataset keeps per day of its old zone: it drops the views
// feeding the per-day tables and the tables (Migrate then creates them in the new zone, refills
// <ds>_raw_days and <ds>_speed from raw and recreates the views), and deletes the dataset's
// runs and boundary, so that every day raw holds is unrun and the batch layer recomputes it.
// Raw keeps its partitions (of the old zone's days): only retention reads them, a day at a time.
func (m *migrator) recomputeZone(ctx context.Context, ds string) error {
	for _, name := range append([]string{SpeedMV(ds), RawDaysMV(ds)}, zoneTables(ds)...) {
		if err := m.exec(ctx, "DROP TABLE IF EXISTS "+m.g.T(name)); err != nil {
			return err
		}
	}
	for _, table := range []string{BatchRuns, BatchWatermarks} {
		if err := m.exec(ctx, fmt.Sprintf("ALTER TABLE %s DELETE WHERE dataset = %s", m.g.T(table), ledgerLit(ds))); err != nil {
			return err
		}
		if err := m.waitMutations(ctx, table); err != nil {
			return err
		}
	}
	m.rezoned = append(m.rezoned, ds)
	m.rebuilt = append(m.rebuilt, ds) // its views are recreated
	return nil
}

// waitMutations waits until the mutations of a table are done (18.16 runs ALTER … DELETE in the
// background, and has no mutations_sync).
func (m *migrator) waitMutations(ctx context.Context, table string) error {
	for {
		var n uint64
		if err := m.conn.QueryRow(ctx, "SELECT count() FROM system.mutations WHERE database = ? AND table = ? AND is_done = 0", m.g.DB, table).Scan(&n); err != nil {
			return fmt.Errorf("cannot read the mutations of %s: %w", table, err)
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the deletion of rows of %s: %w", table, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ledgerLit is a string literal of a validated dataset name.
func ledgerLit(s string) string { return "'" + s + "'" }
