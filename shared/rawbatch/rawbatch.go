// Package rawbatch holds decoded events in the columns of a dataset's master dataset
// (<ds>_raw) and writes them in columnar inserts. The speed layer's micro-batches and
// `lambda import`'s batches are the same rows, written by the same code.
package rawbatch

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/event"
	"github.com/lambda-platform/lambda/shared/metric"
	"github.com/lambda-platform/lambda/shared/schema"
)

// Columns are rows of <ds>_raw, column by column, without _topic and _partition (the same for
// every row of a source; see Part) and _ingested_at (the server's).
type Columns struct {
	ID   []string
	Time []time.Time
	// Dims holds a column per dimension, in config order.
	Dims [][]string
	// Nums and Keys hold a column per value column (config.Dataset.ValueColumns): Nums[i] is
	// filled for a numeric one, Keys[i] for a distinct-count key.
	Nums   [][]sql.NullFloat64
	Keys   [][]string
	Offset []int64
	Late   []uint8
}

// New returns empty columns for dims dimensions and vals value columns.
func New(dims, vals int) Columns {
	return Columns{Dims: make([][]string, dims), Nums: make([][]sql.NullFloat64, vals), Keys: make([][]string, vals)}
}

// Len is the number of rows.
func (c *Columns) Len() int { return len(c.ID) }

// Reset empties the columns, keeping their capacity.
func (c *Columns) Reset() {
	c.ID, c.Time, c.Offset, c.Late = c.ID[:0], c.Time[:0], c.Offset[:0], c.Late[:0]
	for i := range c.Dims {
		c.Dims[i] = c.Dims[i][:0]
	}
	for i := range c.Nums {
		c.Nums[i] = c.Nums[i][:0]
		c.Keys[i] = c.Keys[i][:0]
	}
}

// Add appends a decoded row. isKey says which value columns are keys.
func (c *Columns) Add(r *event.Row, offset int64, late bool, isKey []bool) {
	c.ID = append(c.ID, r.ID)
	c.Time = append(c.Time, r.Time)
	for i, v := range r.Dims {
		c.Dims[i] = append(c.Dims[i], v)
	}
	for i, k := range isKey {
		if k {
			c.Keys[i] = append(c.Keys[i], r.Keys[i])
		} else {
			c.Nums[i] = append(c.Nums[i], r.Nums[i])
		}
	}
	c.Offset = append(c.Offset, offset)
	var l uint8
	if late {
		l = 1
	}
	c.Late = append(c.Late, l)
}

// Filter returns a copy of the rows keep accepts, by index.
func (c *Columns) Filter(keep func(i int) bool, isKey []bool) Columns {
	out := New(len(c.Dims), len(isKey))
	for i := range c.ID {
		if !keep(i) {
			continue
		}
		out.ID = append(out.ID, c.ID[i])
		out.Time = append(out.Time, c.Time[i])
		for d := range c.Dims {
			out.Dims[d] = append(out.Dims[d], c.Dims[d][i])
		}
		for v, k := range isKey {
			if k {
				out.Keys[v] = append(out.Keys[v], c.Keys[v][i])
			} else {
				out.Nums[v] = append(out.Nums[v], c.Nums[v][i])
			}
		}
		out.Offset = append(out.Offset, c.Offset[i])
		out.Late = append(out.Late, c.Late[i])
	}
	return out
}

// DayOf is the UTC day number of t (days since 1970-01-01): raw is partitioned by it.
func DayOf(t time.Time) int64 {
	s := t.Unix()
	if s < 0 {
		return (s - 86399) / 86400
	}
	return s / 86400
}

// MaxDaysPerInsert keeps every insert under current ClickHouse's limit of 100 partitions per
// insert block (raw and speed are partitioned by day).
const MaxDaysPerInsert = 90

// BuildError is an insert clickhouse-go could not build from the rows (a value its column
// cannot hold): retrying the same rows cannot help.
type BuildError struct{ Err error }

func (e *BuildError) Error() string { return "cannot build the insert: " + e.Err.Error() }
func (e *BuildError) Unwrap() error { return e.Err }

// Part is rows from one source: a Kafka partition, or an imported file.
type Part struct {
	Topic     string
	Partition int32
	Rows      *Columns
}

// Writer writes rows of one dataset's raw table.
type Writer struct {
	// SQL is the insert statement with its columns named.
	SQL   string
	ndims int
	isKey []bool
}

// NewWriter returns the writer of dataset d into table, the qualified name of its raw table.
func NewWriter(table string, d *config.Dataset) *Writer {
	w := &Writer{ndims: len(d.Dimensions)}
	for _, c := range d.ValueColumns() {
		w.isKey = append(w.isKey, c.Type == metric.KeyType)
	}
	var cols []string
	for _, c := range schema.RawColumns(d) {
		if c.Name != "_ingested_at" {
			cols = append(cols, schema.Q(c.Name))
		}
	}
	w.SQL = "INSERT INTO " + table + " (" + strings.Join(cols, ", ") + ")"
	return w
}

// IsKey says which value columns are distinct-count keys (for Columns.Add).
func (w *Writer) IsKey() []bool { return w.isKey }

// Send writes the parts' rows in one columnar insert: id, time, dimensions, value columns,
// _topic, _partition, _offset, _late. The rows must span at most MaxDaysPerInsert days.
func (w *Writer) Send(ctx context.Context, conn driver.Conn, parts []Part) (err error) {
	batch, err := conn.PrepareBatch(ctx, w.SQL)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = batch.Abort()
		}
	}()
	col := 0
	each := func(get func(p Part) any) error {
		for _, p := range parts {
			if p.Rows.Len() == 0 {
				continue
			}
			if err := batch.Column(col).Append(get(p)); err != nil {
				return &BuildError{fmt.Errorf("column %d: %w", col, err)}
			}
		}
		col++
		return nil
	}
	appends := []func(p Part) any{
		func(p Part) any { return p.Rows.ID },
		func(p Part) any { return p.Rows.Time },
	}
	for i := range w.ndims {
		appends = append(appends, func(p Part) any { return p.Rows.Dims[i] })
	}
	for i, key := range w.isKey {
		if key {
			appends = append(appends, func(p Part) any { return p.Rows.Keys[i] })
		} else {
			// []*float64, not []sql.NullFloat64: clickhouse-go v2.50 writes an invalid
			// sql.NullFloat64 in a slice as 0, not NULL.
			appends = append(appends, func(p Part) any { return nullable(p.Rows.Nums[i]) })
		}
	}
	appends = append(appends,
		func(p Part) any { return repeat(p.Topic, p.Rows.Len()) },
		func(p Part) any { return repeat(p.Partition, p.Rows.Len()) },
		func(p Part) any { return p.Rows.Offset },
		func(p Part) any { return p.Rows.Late },
	)
	for _, get := range appends {
		if err := each(get); err != nil {
			return err
		}
	}
	return batch.Send()
}

// nullable points into the values, nil for the invalid ones.
func nullable(v []sql.NullFloat64) []*float64 {
	out := make([]*float64, len(v))
	for i := range v {
		if v[i].Valid {
			out[i] = &v[i].Float64
		}
	}
	return out
}

func repeat[T any](v T, n int) []T {
	out := make([]T, n)
	for i := range out {
		out[i] = v
	}
	return out
}
