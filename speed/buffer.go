package speed

import (
	"database/sql"
	"time"

	"github.com/lambda-platform/lambda/shared/event"
)

// buffer holds what one partition consumed since its last flush, in columns of <ds>_raw, with
// the counts its speed_flushes row needs. Every consumed offset in [first, last] is a raw row,
// a reject or a duplicate.
type buffer struct {
	first, last int64 // offsets covered; first < 0 when empty

	id     []string
	time   []time.Time
	dims   [][]string
	nums   [][]sql.NullFloat64 // per value column (numeric ones)
	keys   [][]string          // per value column (key ones)
	offset []int64
	late   []uint8

	rejects []reject
	refused int // raw rows ClickHouse refused: counted in rows(), written as the last rejects
	dups    int
	lateN   int
	maxTime time.Time
	bytes   int
	n       int // messages covered
}

type reject struct {
	payload, reason, detail string
	offset                  int64
}

func newBuffer(dims, vals int) *buffer {
	return &buffer{first: -1, last: -1, dims: make([][]string, dims), nums: make([][]sql.NullFloat64, vals), keys: make([][]string, vals)}
}

// reset empties the buffer, keeping its capacity.
func (b *buffer) reset() {
	b.first, b.last = -1, -1
	b.id, b.time, b.offset, b.late = b.id[:0], b.time[:0], b.offset[:0], b.late[:0]
	for i := range b.dims {
		b.dims[i] = b.dims[i][:0]
	}
	for i := range b.nums {
		b.nums[i] = b.nums[i][:0]
		b.keys[i] = b.keys[i][:0]
	}
	clear(b.rejects)
	b.rejects = b.rejects[:0]
	b.dups, b.lateN, b.bytes, b.n, b.refused = 0, 0, 0, 0, 0
	b.maxTime = time.Time{}
}

func (b *buffer) empty() bool { return b.first < 0 }

func (b *buffer) rows() int { return len(b.id) }

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
	b.id = append(b.id, r.ID)
	b.time = append(b.time, r.Time)
	for i, v := range r.Dims {
		b.dims[i] = append(b.dims[i], v)
	}
	for i, k := range isKey {
		if k {
			b.keys[i] = append(b.keys[i], r.Keys[i])
		} else {
			b.nums[i] = append(b.nums[i], r.Nums[i])
		}
	}
	b.offset = append(b.offset, offset)
	var l uint8
	if late {
		l = 1
		b.lateN++
	}
	b.late = append(b.late, l)
	if r.Time.After(b.maxTime) {
		b.maxTime = r.Time
	}
}

// filter returns a copy of the rows of the buffer keep accepts, by index (rejects and counts
// are not copied).
func (b *buffer) filter(keep func(i int) bool, isKey []bool) *buffer {
	out := newBuffer(len(b.dims), len(isKey))
	for i := range b.id {
		if !keep(i) {
			continue
		}
		out.id = append(out.id, b.id[i])
		out.time = append(out.time, b.time[i])
		for d := range b.dims {
			out.dims[d] = append(out.dims[d], b.dims[d][i])
		}
		for v, k := range isKey {
			if k {
				out.keys[v] = append(out.keys[v], b.keys[v][i])
			} else {
				out.nums[v] = append(out.nums[v], b.nums[v][i])
			}
		}
		out.offset = append(out.offset, b.offset[i])
		out.late = append(out.late, b.late[i])
	}
	return out
}

// dayOf is the UTC day number of t (days since 1970-01-01).
func dayOf(t time.Time) int64 {
	s := t.Unix()
	if s < 0 {
		return (s - 86399) / 86400
	}
	return s / 86400
}
