package serving

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
	"github.com/lambda-platform/lambda/shared/watermark"
)

// stateTTL is how long a dataset's watermarks and run versions are reused. A batch run is
// visible to the API at most this long after it wrote its success.
const stateTTL = time.Second

// snapshot is State plus the speed progress, as read at one time.
type snapshot struct {
	State
	SpeedWatermark time.Time
	Partitions     []watermark.Partition
	ReadAt         time.Time
}

type stateCache struct {
	conn driver.Conn
	cfg  *config.Config
	g    *schema.Generator
	mu   sync.Mutex
	m    map[string]*snapshot
	// refreshing marks datasets whose snapshot one caller is reading.
	refreshing map[string]bool
	// ttl is stateTTL, zero in tests that must see every write at once.
	ttl time.Duration
}

// get returns the dataset's snapshot, reading it again when older than the TTL. One caller
// reads; while it does, the others keep using the previous snapshot, so a refresh never stalls
// every request.
func (c *stateCache) get(ctx context.Context, ds *config.Dataset, now time.Time) (*snapshot, error) {
	c.mu.Lock()
	s, ok := c.m[ds.Name]
	fresh := ok && c.ttl > 0 && now.Sub(s.ReadAt) >= 0 && now.Sub(s.ReadAt) < c.ttl
	if fresh || (ok && c.ttl > 0 && c.refreshing[ds.Name]) {
		c.mu.Unlock()
		return s, nil
	}
	if c.refreshing == nil {
		c.refreshing = map[string]bool{}
	}
	c.refreshing[ds.Name] = true
	c.mu.Unlock()
	s, err := readState(ctx, c.conn, c.g, c.cfg.ClickHouse.InsertTimeout.D(), ds, now)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.refreshing[ds.Name] = false
	if err != nil {
		return nil, err
	}
	c.m[ds.Name] = s
	return s, nil
}

// readState reads a dataset's watermarks: the persisted batch watermark lowered to the day
// before the first dirty day within the lookback, the newest successful run per day, the
// speed watermark and the oldest minute the speed view still holds.
func readState(ctx context.Context, conn driver.Conn, g *schema.Generator, insertTimeout time.Duration, ds *config.Dataset, now time.Time) (*snapshot, error) {
	s := &snapshot{ReadAt: now}
	wm, ok, err := watermark.Batch(ctx, conn, g.DB, ds.Name)
	if err != nil {
		return nil, err
	}
	if ok {
		s.Watermark, s.Effective = wm, wm
		dirty, err := watermark.DirtyDays(ctx, conn, g.DB, ds.Name, dayOf(now.Add(-ds.BatchConf.Lookback.D())), insertTimeout)
		if err != nil {
			return nil, err
		}
		s.Dirty = dirty
		for _, d := range dirty {
			if !d.After(s.Effective) {
				s.Effective = d.AddDate(0, 0, -1)
			}
		}
		if s.Effective.Year() <= 1970 {
			s.Effective = time.Time{}
		}
	}
	s.Runs = map[time.Time]string{}
	q := fmt.Sprintf(`SELECT day, argMax(run_id, at_us) FROM %s WHERE dataset = ? AND status = 'succeeded' GROUP BY day`, g.T(schema.BatchRuns))
	rows, err := conn.Query(ctx, q, ds.Name)
	if err != nil {
		return nil, fmt.Errorf("cannot read batch runs of %s: %w", ds.Name, err)
	}
	for rows.Next() {
		var d time.Time
		var id string
		if err := rows.Scan(&d, &id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("cannot read batch runs of %s: %w", ds.Name, err)
		}
		s.Runs[dayOf(d)] = id
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("cannot read batch runs of %s: %w", ds.Name, err)
	}
	s.SpeedWatermark, s.Partitions, err = watermark.Speed(ctx, conn, g.DB, ds.Name, now)
	if err != nil {
		return nil, err
	}
	var n uint64
	var oldest time.Time
	q = fmt.Sprintf("SELECT count(), min(minute) FROM %s", g.T(schema.Speed(ds.Name)))
	if err := conn.QueryRow(ctx, q).Scan(&n, &oldest); err != nil {
		return nil, fmt.Errorf("cannot read the oldest minute of %s: %w", schema.Speed(ds.Name), err)
	}
	if n > 0 {
		s.SpeedOldest = oldest.UTC()
	}
	return s, nil
}
