package ledger

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

const (
	// HeartbeatEvery is how often the speed layer writes a ledger row for a partition it owns
	// that had nothing to flush, so that readers see it alive and caught up.
	HeartbeatEvery = 10 * time.Second
	// FreshFor is how old the newest ledger row of a partition may be for its "lag 0" to count
	// as evidence that the partition is caught up: a few heartbeat intervals. An older row
	// says nothing of the records that arrived since: its owner may be dead or stuck.
	FreshFor = 3 * HeartbeatEvery
)

// Partition is the speed layer's progress on one Kafka partition, from the ledger.
type Partition struct {
	Partition int32 `json:"partition"`
	// Committed is the next offset to consume, as committed.
	Committed int64 `json:"committed_offset"`
	// HighWatermark is the broker's end offset the owner saw at its newest ledger row.
	HighWatermark int64     `json:"high_watermark"`
	Lag           int64     `json:"lag"`
	NewestEvent   time.Time `json:"newest_event_time"`
	FlushedAt     time.Time `json:"flushed_at"`
	// Age is how old the newest ledger row is, by ClickHouse's clock (which wrote flushed_at).
	Age time.Duration `json:"-"`
	// CaughtUp says the partition counts as "now" in the watermark, and Evidence why: "kafka"
	// (committed offset = end offset), "heartbeat" (fresh and lag 0), or "" (not caught up).
	CaughtUp bool   `json:"caught_up"`
	Evidence string `json:"evidence,omitempty"`
}

// KafkaOffsets is Kafka's own word on a partition of a dataset's topic, read when sealing: the
// group's committed offset (-1 when none), and the partition's oldest and end offsets.
type KafkaOffsets struct {
	Committed, Oldest, End int64
}

// CaughtUp reports whether the group has consumed every record of the partition.
func (k KafkaOffsets) CaughtUp() bool { return max(k.Committed, k.Oldest) >= k.End }

// progressSQL gives per partition of a dataset (bound) the committed offset, the end offset
// seen at the newest flush, the newest event time, the newest flush time and its age by the
// server's clock.
func progressSQL(db string) string {
	return fmt.Sprintf(`SELECT partition, max(last_offset) + 1, argMax(high_watermark, (flushed_at, last_offset)),
    max(max_event_time), max(flushed_at), toInt64(now()) - toInt64(max(flushed_at))
FROM %s WHERE dataset = ? GROUP BY partition ORDER BY partition`, t(db, SpeedFlushes))
}

// SpeedWatermarkSQL is the speed watermark on the ledger's heartbeats alone, as a scalar
// subquery (1970-01-01 00:00:00 when nothing was consumed): the SQL form of Speed without
// Kafka's offsets, for the views. Partition by partition: now when its newest ledger row is
// younger than FreshFor by ClickHouse's clock and says lag 0, else its newest committed event
// time, capped at now; the minimum over partitions.
func SpeedWatermarkSQL(db, ds string) string {
	return fmt.Sprintf(`(SELECT min(if(p_hw <= p_committed AND p_age <= %d, now(), least(p_newest, now())))
    FROM (SELECT partition, max(last_offset) + 1 AS p_committed, argMax(high_watermark, (flushed_at, last_offset)) AS p_hw,
        max(max_event_time) AS p_newest, toInt64(now()) - toInt64(max(flushed_at)) AS p_age
        FROM %s WHERE dataset = %s GROUP BY partition))`, int64(FreshFor.Seconds()), t(db, SpeedFlushes), lit(ds))
}

// PartitionTime is a partition's contribution to the speed watermark: now when it is caught up,
// else its newest committed event time, capped at now. The speed layer's own gauge uses it too.
func PartitionTime(caughtUp bool, newest, now time.Time) time.Time {
	if caughtUp || newest.After(now) {
		return now
	}
	return newest
}

// Speed returns the speed watermark of a dataset, the minimum over partitions of PartitionTime
// (zero when nothing was consumed yet), and the progress per partition.
//
// kafka, when not nil, is Kafka's word per partition of the topic (see KafkaOffsets), and then
// the only evidence of being caught up: a partition of the topic absent from the ledger holds
// the watermark at zero unless Kafka says it has nothing to consume. Without it (Kafka not
// reachable, or a reader that does not ask, such as the API) a partition is caught up while
// its newest ledger row is fresh (FreshFor, by ClickHouse's clock) and says lag 0. A dead,
// stuck or partitioned-away consumer therefore holds the watermark at its partitions' newest
// committed event times.
func Speed(ctx context.Context, conn driver.Conn, db, ds string, now time.Time, kafka map[int32]KafkaOffsets) (time.Time, []Partition, error) {
	rows, err := conn.Query(ctx, progressSQL(db), ds)
	if err != nil {
		return time.Time{}, nil, fmt.Errorf("cannot read speed progress of %s: %w", ds, err)
	}
	defer rows.Close()
	var parts []Partition
	for rows.Next() {
		var p Partition
		var age int64
		if err := rows.Scan(&p.Partition, &p.Committed, &p.HighWatermark, &p.NewestEvent, &p.FlushedAt, &age); err != nil {
			return time.Time{}, nil, fmt.Errorf("cannot read speed progress of %s: %w", ds, err)
		}
		p.NewestEvent, p.FlushedAt, p.Age = p.NewestEvent.UTC(), p.FlushedAt.UTC(), time.Duration(age)*time.Second
		p.Lag = max(0, p.HighWatermark-p.Committed)
		parts = append(parts, p)
	}
	if err := rows.Err(); err != nil {
		return time.Time{}, nil, fmt.Errorf("cannot read speed progress of %s: %w", ds, err)
	}
	wm, parts := speedWatermark(parts, now, kafka)
	return wm, parts, nil
}

// speedWatermark applies the rule to the ledger's partitions.
func speedWatermark(parts []Partition, now time.Time, kafka map[int32]KafkaOffsets) (time.Time, []Partition) {
	var wm time.Time
	hold := false // a partition with records and no ledger row: nothing is known to be consumed
	seen := map[int32]bool{}
	var out []Partition
	for _, p := range parts {
		seen[p.Partition] = true
		if kafka != nil {
			k, ok := kafka[p.Partition]
			if !ok {
				continue // not a partition of the topic (any more)
			}
			p.CaughtUp = k.CaughtUp()
			p.Lag = max(0, k.End-max(k.Committed, k.Oldest))
			if p.CaughtUp {
				p.Evidence = "kafka"
			}
		} else if p.Lag == 0 && p.Age <= FreshFor {
			p.CaughtUp, p.Evidence = true, "heartbeat"
		}
		t := PartitionTime(p.CaughtUp, p.NewestEvent, now)
		if wm.IsZero() || t.Before(wm) {
			wm = t
		}
		out = append(out, p)
	}
	for part, k := range kafka {
		if seen[part] {
			continue
		}
		if k.CaughtUp() {
			out = append(out, Partition{Partition: part, Committed: max(k.Committed, k.Oldest), HighWatermark: k.End, CaughtUp: true, Evidence: "kafka"})
			if wm.IsZero() || now.Before(wm) {
				wm = now
			}
			continue
		}
		out = append(out, Partition{Partition: part, Committed: k.Committed, HighWatermark: k.End, Lag: k.End - max(k.Committed, k.Oldest)})
		hold = true
	}
	if hold {
		wm = time.Time{}
	}
	slices.SortFunc(out, func(a, b Partition) int { return int(a.Partition - b.Partition) })
	return wm.UTC(), out
}
