package speed

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Health returns nil while every dataset makes progress, or an error with one line per
// problem:
//
//   - a dataset stopped because ClickHouse refuses its flushes for good;
//   - partitions this process owns that have records to consume but no flush committed for
//     max(5 × speed.flush_interval, 30 s): ClickHouse failing, a consumer stuck;
//   - a dataset without a consumer group session for that long, and at least the group's
//     rebalance plus session timeouts (40 s): Kafka unreachable, a group it cannot join.
//
// An orchestrator that restarts the process on it loses nothing: what was not committed is
// consumed again.
func (s *Speed) Health() error {
	now := s.now()
	var problems []string
	for _, d := range s.sets {
		problems = append(problems, d.health(now)...)
	}
	if len(problems) == 0 {
		return nil
	}
	return errors.New(strings.Join(problems, "\n"))
}

func (d *dataset) health(now time.Time) []string {
	name := d.d.Name
	if err := d.stopped(); err != nil {
		return []string{fmt.Sprintf("dataset %s stopped: %v", name, oneLine(err.Error()))}
	}
	var out []string
	joinStall := max(d.s.stallAfter, rebalanceTimeout+sessionTimeout)
	if down := now.Sub(time.Unix(0, d.downSince.Load())); !d.inSession.Load() && down >= joinStall {
		msg := fmt.Sprintf("dataset %s: no consumer group session for %s (group %s)", name, down.Round(time.Second), d.group)
		if e := d.groupErr.Load(); e != nil {
			msg += ": " + oneLine(*e)
		}
		out = append(out, msg)
	}
	var stuck []int32
	var lag int64
	var since time.Duration
	d.mu.Lock()
	for _, p := range d.parts {
		p.mu.Lock()
		if !p.revoked && p.committed >= 0 {
			if l := p.claim.HighWaterMarkOffset() - p.committed; l > 0 && now.Sub(p.progress) >= d.s.stallAfter {
				stuck = append(stuck, p.partition)
				lag += l
				since = max(since, now.Sub(p.progress))
			}
		}
		p.mu.Unlock()
	}
	d.mu.Unlock()
	if len(stuck) > 0 {
		slices.Sort(stuck)
		msg := fmt.Sprintf("dataset %s: partitions %v lag %d records with no flush committed for %s", name, stuck, lag, since.Round(time.Second))
		if e := d.flushErr.Load(); e != nil {
			msg += "; last flush error: " + oneLine(*e)
		}
		out = append(out, msg)
	}
	return out
}

// oneLine keeps a problem on its line.
func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }
