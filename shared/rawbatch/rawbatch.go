// Package rawbatch holds decoded events in the columns of a dataset's master dataset
// (<ds>_raw) and writes them in columnar inserts. The speed layer's micro-batches and
// `lambda import`'s batches are the same rows, written by the same code.
//
// The columns are ch-go proto columns: a buffer keeps their capacity from one flush to the
// next, and an insert encodes them as they are, with no copy into a client's own columns
// (native.go).
package rawbatch

import (
	"bufio"
	"context"
	"io"
	"strings"
	"time"

	"github.com/ClickHouse/ch-go/compress"
	"github.com/ClickHouse/ch-go/proto"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/event"
	"github.com/lambda-platform/lambda/shared/metric"
	"github.com/lambda-platform/lambda/shared/schema"
)

// Columns are rows of <ds>_raw, column by column, without _topic and _partition (the same for
// every row of a source; see Part) and _ingested_at (the server's).
type Columns struct {
	ID proto.ColStr
	// Time is the event time in Unix seconds (raw's DateTime).
	Time proto.ColUInt32
	// Dims holds a column per dimension, in config order.
	Dims []proto.ColStr
	// Nums and Keys hold a column per value column (config.Dataset.ValueColumns): Nums[i] is
	// filled for a numeric one, Keys[i] for a distinct-count key.
	Nums   []Floats
	Keys   []proto.ColStr
	Offset proto.ColInt64
	Late   proto.ColUInt8
}

// Floats is a Nullable(Float64) column: a value (0 for NULL) and a null flag per row, the two
// parts of its native encoding.
type Floats struct {
	Values proto.ColFloat64
	Nulls  proto.ColUInt8 // 1 for NULL
}

// Valid says whether row i holds a value rather than NULL.
func (f *Floats) Valid(i int) bool { return f.Nulls[i] == 0 }

// New returns empty columns for dims dimensions and vals value columns.
func New(dims, vals int) Columns {
	return Columns{Dims: make([]proto.ColStr, dims), Nums: make([]Floats, vals), Keys: make([]proto.ColStr, vals)}
}

// Len is the number of rows.
func (c *Columns) Len() int { return len(c.Offset) }

// Reset empties the columns, keeping their capacity.
func (c *Columns) Reset() {
	c.ID.Reset()
	c.Time, c.Offset, c.Late = c.Time[:0], c.Offset[:0], c.Late[:0]
	for i := range c.Dims {
		c.Dims[i].Reset()
	}
	for i := range c.Nums {
		c.Nums[i].Values = c.Nums[i].Values[:0]
		c.Nums[i].Nulls = c.Nums[i].Nulls[:0]
		c.Keys[i].Reset()
	}
}

// Truncate keeps the first n rows, and the capacity.
func (c *Columns) Truncate(n int) {
	str := func(s *proto.ColStr) {
		s.Pos = s.Pos[:n]
		if n == 0 {
			s.Buf = s.Buf[:0]
		} else {
			s.Buf = s.Buf[:s.Pos[n-1].End]
		}
	}
	str(&c.ID)
	c.Time, c.Offset, c.Late = c.Time[:n], c.Offset[:n], c.Late[:n]
	for i := range c.Dims {
		str(&c.Dims[i])
	}
	for i := range c.Nums {
		if len(c.Nums[i].Nulls) > 0 {
			c.Nums[i].Values = c.Nums[i].Values[:n]
			c.Nums[i].Nulls = c.Nums[i].Nulls[:n]
		}
		if len(c.Keys[i].Pos) > 0 {
			str(&c.Keys[i])
		}
	}
}

// Add appends a decoded row. isKey says which value columns are keys.
func (c *Columns) Add(r *event.Row, offset int64, late bool, isKey []bool) {
	c.ID.Append(r.ID)
	c.Time = append(c.Time, unixSeconds(r.Time))
	for i, v := range r.Dims {
		c.Dims[i].Append(v)
	}
	for i, k := range isKey {
		if k {
			c.Keys[i].Append(r.Keys[i])
			continue
		}
		n := &c.Nums[i]
		if v := r.Nums[i]; v.Valid {
			n.Values = append(n.Values, v.Float64)
			n.Nulls = append(n.Nulls, 0)
		} else {
			n.Values = append(n.Values, 0)
			n.Nulls = append(n.Nulls, 1)
		}
	}
	c.Offset = append(c.Offset, offset)
	var l uint8
	if late {
		l = 1
	}
	c.Late = append(c.Late, l)
}

// unixSeconds is t as a DateTime: Unix seconds, which the decoder keeps within 1970–2106.
func unixSeconds(t time.Time) uint32 { return uint32(t.Unix()) }

// TimeAt is the event time of row i.
func (c *Columns) TimeAt(i int) time.Time { return time.Unix(int64(c.Time[i]), 0).UTC() }

// DayAt is the UTC day number of row i's event time.
func (c *Columns) DayAt(i int) int64 { return int64(c.Time[i]) / 86400 }

// IDAt is the id of row i.
func (c *Columns) IDAt(i int) string { return c.ID.Row(i) }

// IDBytes is the id of row i, pointing into the column: valid until the next Add or Reset.
func (c *Columns) IDBytes(i int) []byte {
	p := c.ID.Pos[i]
	return c.ID.Buf[p.Start:p.End]
}

// Filter returns a copy of the rows keep accepts, by index.
func (c *Columns) Filter(keep func(i int) bool, isKey []bool) Columns {
	out := New(len(c.Dims), len(isKey))
	str := func(dst *proto.ColStr, src *proto.ColStr, i int) {
		p := src.Pos[i]
		dst.AppendBytes(src.Buf[p.Start:p.End])
	}
	for i := range c.Len() {
		if !keep(i) {
			continue
		}
		str(&out.ID, &c.ID, i)
		out.Time = append(out.Time, c.Time[i])
		for d := range c.Dims {
			str(&out.Dims[d], &c.Dims[d], i)
		}
		for v, k := range isKey {
			if k {
				str(&out.Keys[v], &c.Keys[v], i)
			} else {
				out.Nums[v].Values = append(out.Nums[v].Values, c.Nums[v].Values[i])
				out.Nums[v].Nulls = append(out.Nums[v].Nulls, c.Nums[v].Nulls[i])
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

// BuildError is an insert that cannot be built from the rows (raw's columns are not of the
// types the rows are encoded as): retrying the same rows cannot help.
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
	SQL    string
	names  []string // raw's columns but _ingested_at, unquoted
	types  []string
	ndims  int
	isKey  []bool
	native *Native
}

// NewWriter returns the writer of dataset d into table, the qualified name of its raw table,
// through the insert client n.
func NewWriter(table string, d *config.Dataset, n *Native) *Writer {
	w := &Writer{ndims: len(d.Dimensions), native: n}
	for _, c := range d.ValueColumns() {
		w.isKey = append(w.isKey, c.Type == metric.KeyType)
	}
	var cols []string
	for _, c := range schema.RawColumns(d) {
		if c.Name != "_ingested_at" {
			cols = append(cols, schema.Q(c.Name))
			w.names = append(w.names, c.Name)
			w.types = append(w.types, c.Type)
		}
	}
	w.SQL = "INSERT INTO " + table + " (" + strings.Join(cols, ", ") + ")"
	return w
}

// IsKey says which value columns are distinct-count keys (for Columns.Add).
func (w *Writer) IsKey() []bool { return w.isKey }

// Send writes the parts' rows in one columnar insert: id, time, dimensions, value columns,
// _topic, _partition, _offset, _late. The rows must span at most MaxDaysPerInsert days.
func (w *Writer) Send(ctx context.Context, parts []Part) error {
	rows, cols := w.columns(parts)
	return w.native.insert(ctx, w.SQL, rows, cols)
}

// columns returns the row count of the parts and how to encode each of raw's columns.
func (w *Writer) columns(parts []Part) (int, []column) {
	rows := 0
	for _, p := range parts {
		rows += p.Rows.Len()
	}
	cols := make([]column, 0, len(w.names))
	add := func(f func(b *proto.Buffer)) {
		i := len(cols)
		cols = append(cols, column{name: w.names[i], typ: w.types[i], encode: f})
	}
	each := func(f func(b *proto.Buffer, c *Columns)) func(b *proto.Buffer) {
		return func(b *proto.Buffer) {
			for _, p := range parts {
				f(b, p.Rows)
			}
		}
	}
	add(each(func(b *proto.Buffer, c *Columns) { c.ID.EncodeColumn(b) }))
	add(each(func(b *proto.Buffer, c *Columns) { c.Time.EncodeColumn(b) }))
	for i := range w.ndims {
		add(each(func(b *proto.Buffer, c *Columns) { c.Dims[i].EncodeColumn(b) }))
	}
	for i, key := range w.isKey {
		if key {
			add(each(func(b *proto.Buffer, c *Columns) { c.Keys[i].EncodeColumn(b) }))
			continue
		}
		// Nullable: every row's null flag, then every row's value.
		add(func(b *proto.Buffer) {
			for _, p := range parts {
				p.Rows.Nums[i].Nulls.EncodeColumn(b)
			}
			for _, p := range parts {
				p.Rows.Nums[i].Values.EncodeColumn(b)
			}
		})
	}
	add(func(b *proto.Buffer) {
		for _, p := range parts {
			for range p.Rows.Len() {
				b.PutString(p.Topic)
			}
		}
	})
	add(func(b *proto.Buffer) {
		for _, p := range parts {
			for range p.Rows.Len() {
				b.PutInt32(p.Partition)
			}
		}
	})
	add(each(func(b *proto.Buffer, c *Columns) { c.Offset.EncodeColumn(b) }))
	add(each(func(b *proto.Buffer, c *Columns) { c.Late.EncodeColumn(b) }))
	return rows, cols
}

// Encode writes the parts' rows to dst as an insert's data packet carries them (LZ4 frames of
// the native block), at the protocol revision of ClickHouse 18.16: what encoding an insert
// costs, without a server (benchmarks).
func (w *Writer) Encode(dst io.Writer, parts []Part) error {
	c := &nconn{w: bufio.NewWriterSize(dst, 64<<10), lz4: compress.NewWriter(compress.LevelZero, compress.LZ4), revision: 54412}
	types := make(map[string]string, len(w.names))
	for i, n := range w.names {
		types[n] = w.types[i]
	}
	rows, cols := w.columns(parts)
	if err := c.writeData(rows, cols, types); err != nil {
		return err
	}
	return c.w.Flush()
}
