package speed

import (
	"time"

	"github.com/lambda-platform/lambda/shared/event"
	"github.com/lambda-platform/lambda/shared/rawbatch"
)

// buffer holds what one partition consumed since its last flush, in columns of <ds>_raw, with
// the counts its speed_flushes row needs. Every consumed offset in [first, last] is a raw row,
// a reject or a duplicate.
type buffer struct {
	first, last int64 // offsets covered; first < 0 when empty

	rawbatch.Columns

	rejects []reject
	refused int // raw rows ClickHouse refused: counted in rows(), written as the last rejects
	dups    int
	lateN   int
	maxTime time.Time
	// minTime is the oldest time of a row the speed view takes (not late): the hours of
	// <ds>_speed_hourly the flush may change.
	minTime time.Time
	bytes   int
	n       int // messages covered
}

type reject struct {
	payload, reason, detail string
	offset                  int64
}

func newBuffer(dims, vals int) *buffer {
	return &buffer{first: -1, last: -1, Columns: rawbatch.New(dims, vals)}
}

// reset empties the buffer, keeping its capacity.
func (b *buffer) reset() {
	b.first, b.last = -1, -1
	b.Columns.Reset()
	clear(b.rejects)
	b.rejects = b.rejects[:0]
	b.dups, b.lateN, b.bytes, b.n, b.refused = 0, 0, 0, 0, 0
	b.maxTime, b.minTime = time.Time{}, time.Time{}
}

func (b *buffer) empty() bool { return b.first < 0 }

func (b *buffer) rows() int { return b.Len() }

// cover records that offset was consumed into this buffer.
func (b *buffer) cover(offset int64, size int) {
	if b.first < 0 {
		b.first = offset
	}
	b.last = offset
	b.bytes += size
	b.n++
}

// add appends a decoded row. isKey says which value columns are keys.
func (b *buffer) add(r *event.Row, offset int64, late bool, isKey []bool) {
	b.Columns.Add(r, offset, late, isKey)
	if late {
		b.lateN++
	} else if b.minTime.IsZero() || r.Time.Before(b.minTime) {
		b.minTime = r.Time
	}
	if r.Time.After(b.maxTime) {
		b.maxTime = r.Time
	}
}

// filter returns a copy of the rows of the buffer keep accepts, by index (rejects and counts
// are not copied).
func (b *buffer) filter(keep func(i int) bool, isKey []bool) *buffer {
	return &buffer{first: -1, last: -1, Columns: b.Columns.Filter(keep, isKey)}
}

// dayOf is the UTC day number of t (days since 1970-01-01).
func dayOf(t time.Time) int64 { return rawbatch.DayOf(t) }

// localDay is the day number of t's local date in the dataset's zone loc, the day the batch
// layer and its watermark count it in (a watermark Date read as UTC midnight has its dayOf).
func localDay(t time.Time, loc *time.Location) int64 {
	if loc == time.UTC {
		return dayOf(t)
	}
	_, off := t.In(loc).Zone()
	return dayOf(t.Add(time.Duration(off) * time.Second))
}
