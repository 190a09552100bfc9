package speed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/lambda-platform/lambda/shared/event"
	"github.com/lambda-platform/lambda/shared/rawbatch"
)

// A flush ClickHouse refuses.
//
// Most insert errors are transient: the network, timeouts, a server shutting down or out of
// memory, too many parts, a read-only replica waiting for ZooKeeper. They are retried with
// backoff for as long as they last, and so is every error this file does not name: retrying
// something that could succeed is never wrong, stopping a dataset for it would be.
//
// A refusal retrying cannot fix is a ClickHouse exception with one of the codes below, or a
// batch clickhouse-go cannot even build (a column's type no longer takes the buffer's
// values). It is one of two kinds:
//
//   - statement refusals concern the insert itself (a column or table that no longer
//     exists, a type the buffer cannot be written as): every row is refused, and the dataset
//     stops at once, without committing, so that a restart after the fix resumes from the
//     last committed offset with nothing lost;
//   - row refusals may concern some rows only (a value a type, a DEFAULT or MATERIALIZED
//     expression, a CHECK constraint or a materialized view on raw rejects). The flush's rows
//     are bisected, transient errors still retried inside, until each refused row stands
//     alone: those go to <ds>_rejects (reason insert_refused, the server's message as
//     detail), the others to raw, and the offsets are committed as usual. When every row of a
//     flush of two or more is refused, or more than maxRefusedRows, the refusal is not about
//     data but about the schema or a view: the dataset stops as for a statement refusal.
//
// ClickHouse writes an insert into the table before it pushes it to the table's
// materialized views, and a view's exception does not take the rows back (18.16 and current
// versions alike; a cluster insert may also have reached some shards). After a refusal, the
// rows raw already holds are therefore looked up and counted as written: never inserted
// twice, never rejected. The refusals of the halves are looked up too only when the first one
// had written something: a refusal that wrote nothing of a block writes nothing of its parts.

// refusalKind says what retrying an insert error can achieve.
type refusalKind int

const (
	transient   refusalKind = iota // retried with backoff
	rowRefusal                     // permanent, maybe for some rows only: bisect
	stmtRefusal                    // permanent for every row: stop the dataset
)

// refusalCodes are the ClickHouse error codes retrying cannot fix.
var refusalCodes = map[int32]refusalKind{
	7:   stmtRefusal, // INCORRECT_NUMBER_OF_COLUMNS
	8:   stmtRefusal, // THERE_IS_NO_COLUMN
	9:   stmtRefusal, // SIZES_OF_COLUMNS_DOESNT_MATCH
	10:  stmtRefusal, // NOT_FOUND_COLUMN_IN_BLOCK
	16:  stmtRefusal, // NO_SUCH_COLUMN_IN_TABLE
	20:  stmtRefusal, // NUMBER_OF_COLUMNS_DOESNT_MATCH
	46:  stmtRefusal, // UNKNOWN_FUNCTION (in a DEFAULT expression or a view)
	47:  stmtRefusal, // UNKNOWN_IDENTIFIER
	50:  stmtRefusal, // UNKNOWN_TYPE
	60:  stmtRefusal, // UNKNOWN_TABLE
	62:  stmtRefusal, // SYNTAX_ERROR
	81:  stmtRefusal, // UNKNOWN_DATABASE
	497: stmtRefusal, // ACCESS_DENIED

	6:   rowRefusal, // CANNOT_PARSE_TEXT
	26:  rowRefusal, // CANNOT_PARSE_QUOTED_STRING
	27:  rowRefusal, // CANNOT_PARSE_INPUT_ASSERTION_FAILED
	36:  rowRefusal, // BAD_ARGUMENTS
	38:  rowRefusal, // CANNOT_PARSE_DATE
	41:  rowRefusal, // CANNOT_PARSE_DATETIME
	43:  rowRefusal, // ILLEGAL_TYPE_OF_ARGUMENT
	53:  rowRefusal, // TYPE_MISMATCH
	69:  rowRefusal, // ARGUMENT_OUT_OF_BOUND
	70:  rowRefusal, // CANNOT_CONVERT_TYPE
	72:  rowRefusal, // CANNOT_PARSE_NUMBER
	117: rowRefusal, // INCORRECT_DATA
	131: rowRefusal, // TOO_LARGE_STRING_SIZE
	153: rowRefusal, // ILLEGAL_DIVISION
	321: rowRefusal, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
	395: rowRefusal, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
	469: rowRefusal, // VIOLATED_CONSTRAINT
}

// maxRefusedRows bounds the rows of one flush refused one by one. Finding each costs about
// two inserts; more than this many is a schema or view problem, not bad data.
const maxRefusedRows = 100

// buildError is a batch clickhouse-go could not build from the buffer: a statement refusal.
type buildError = rawbatch.BuildError

// classify says whether err, returned by an insert, is worth retrying.
func classify(err error) refusalKind {
	var build *buildError
	if errors.As(err, &build) {
		return stmtRefusal
	}
	var ex *clickhouse.Exception
	if errors.As(err, &ex) {
		return refusalCodes[ex.Code] // transient when not named
	}
	return transient
}

// refusedError is an insert ClickHouse refused for good.
type refusedError struct {
	table string
	kind  refusalKind
	err   error
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("clickhouse refused the insert into %s for good: %v", e.table, e.err)
}
func (e *refusedError) Unwrap() error { return e.err }

// stopError stops a dataset: the flush is refused for good and nothing of it is committed.
type stopError struct{ err error }

func (e *stopError) Error() string { return e.err.Error() }
func (e *stopError) Unwrap() error { return e.err }

// refusal is a raw row ClickHouse refused on its own: it goes to <ds>_rejects.
type refusal struct {
	p      *part
	offset int64
	late   bool
	reject reject
}

// insertRows inserts one chunk of rows into raw; a row refusal is bisected into refused
// rows appended to out. It returns a *stopError when the dataset must stop, or ctx's error.
func (d *dataset) insertRows(ctx context.Context, pieces []piece, out *[]refusal) error {
	return d.bisect(ctx, pieces, true, out)
}

// bisect is insertRows; lookup says whether a refusal may have written rows to raw.
func (d *dataset) bisect(ctx context.Context, pieces []piece, lookup bool, out *[]refusal) error {
	err := d.retry(ctx, "raw", func(ctx context.Context) error { return d.sendRaw(ctx, pieces) })
	var re *refusedError
	switch {
	case err == nil:
		return nil
	case !errors.As(err, &re):
		return err // ctx is done
	case re.kind == stmtRefusal:
		return &stopError{re}
	}
	// Rows a view refused after raw took them, or that reached a shard, are written.
	rest := pieces
	if lookup {
		if rest, err = d.notInRaw(ctx, pieces); err != nil {
			return err
		}
		lookup = countRows(rest) < countRows(pieces)
	}
	n := countRows(rest)
	switch {
	case n == 0:
		return nil
	case n == 1:
		for _, pc := range rest {
			if pc.b.rows() == 1 {
				*out = append(*out, refusal{p: pc.p, offset: pc.b.Offset[0], late: pc.b.Late[0] == 1, reject: reject{
					payload: d.rowJSON(pc.b, 0), reason: string(event.InsertRefused), detail: re.err.Error(), offset: pc.b.Offset[0]}})
			}
		}
		if len(*out) > maxRefusedRows {
			return &stopError{fmt.Errorf("clickhouse refused more than %d rows of one flush one by one, the last with: %w", maxRefusedRows, re)}
		}
		return nil
	}
	for _, half := range [][]piece{sliceRows(rest, 0, n/2, d.isKey), sliceRows(rest, n/2, n, d.isKey)} {
		if err := d.bisect(ctx, half, lookup, out); err != nil {
			return err
		}
	}
	return nil
}

// notInRaw returns the pieces without the rows raw already holds (same topic, partition and
// offset). The lookup reads only the days and offset ranges of the pieces.
func (d *dataset) notInRaw(ctx context.Context, pieces []piece) ([]piece, error) {
	var lo, hi time.Time
	var ranges []string
	for _, pc := range pieces {
		if pc.b.rows() == 0 {
			continue
		}
		first, last := pc.b.Offset[0], pc.b.Offset[0]
		for i, off := range pc.b.Offset {
			first, last = min(first, off), max(last, off)
			t := pc.b.TimeAt(i)
			if lo.IsZero() || t.Before(lo) {
				lo = t
			}
			if t.After(hi) {
				hi = t
			}
		}
		ranges = append(ranges, offsetRange(pc.p.partition, first, last))
	}
	if len(ranges) == 0 {
		return nil, nil
	}
	q := lookupSQL(d.rawTable, lo, hi, ranges)
	type key struct {
		partition int32
		offset    int64
	}
	var present map[key]bool
	err := d.retry(ctx, "raw_lookup", func(ctx context.Context) error {
		present = map[key]bool{}
		rows, err := d.s.conn.Query(ctx, q, d.d.Topic)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var k key
			if err := rows.Scan(&k.partition, &k.offset); err != nil {
				return err
			}
			present[k] = true
		}
		return rows.Err()
	})
	if err != nil {
		var re *refusedError
		if errors.As(err, &re) {
			return nil, &stopError{re}
		}
		return nil, err
	}
	if len(present) == 0 {
		return pieces, nil
	}
	out := make([]piece, 0, len(pieces))
	for _, pc := range pieces {
		p := pc.p.partition
		b := pc.b.filter(func(i int) bool { return !present[key{p, pc.b.Offset[i]}] }, d.isKey)
		out = append(out, piece{pc.p, b})
	}
	d.log.Warn("raw holds rows of an insert clickhouse refused (a materialized view refused them after raw took them): counted as written",
		"rows", len(present))
	return out, nil
}

// lookupSQL selects the partitions and offsets of raw rows of the topic (bound as the only
// parameter) between two times and within offset ranges.
func lookupSQL(table string, lo, hi time.Time, ranges []string) string {
	return fmt.Sprintf("SELECT _partition, _offset FROM %s WHERE _topic = ? AND time BETWEEN toDateTime(%d, 'UTC') AND toDateTime(%d, 'UTC') AND (%s) GROUP BY _partition, _offset",
		table, lo.Unix(), hi.Unix(), strings.Join(ranges, " OR "))
}

func offsetRange(partition int32, first, last int64) string {
	return fmt.Sprintf("(_partition = %d AND _offset BETWEEN %d AND %d)", partition, first, last)
}

// countRows is the number of raw rows of pieces.
func countRows(pieces []piece) int {
	n := 0
	for _, pc := range pieces {
		n += pc.b.rows()
	}
	return n
}

// sliceRows returns the rows [from, to) of pieces, counted across them in order.
func sliceRows(pieces []piece, from, to int, isKey []bool) []piece {
	var out []piece
	at := 0
	for _, pc := range pieces {
		n := pc.b.rows()
		lo, hi := max(from-at, 0), min(to-at, n)
		if lo < hi {
			out = append(out, piece{pc.p, pc.b.filter(func(i int) bool { return i >= lo && i < hi }, isKey)})
		}
		at += n
	}
	return out
}

// rowJSON is the payload of a refused row in <ds>_rejects: the decoded row as a JSON object
// keyed by raw's column names. It is not the Kafka record: the buffer keeps decoded columns
// only (keeping every record too would double its memory); the record itself stays in Kafka
// at the reject's _topic, _partition and _offset.
func (d *dataset) rowJSON(b *buffer, i int) string {
	row := map[string]any{"id": b.IDAt(i), "time": b.TimeAt(i).Format(time.RFC3339Nano), "_late": b.Late[i]}
	for k, name := range d.dimNames {
		row[name] = b.Dims[k].Row(i)
	}
	for k, name := range d.valNames {
		switch {
		case d.isKey[k]:
			row[name] = b.Keys[k].Row(i)
		case b.Nums[k].Valid(i):
			row[name] = b.Nums[k].Values[i]
		default:
			row[name] = nil
		}
	}
	out, err := json.Marshal(row)
	if err != nil {
		// Only a NaN or an infinity gets here; say what was there rather than nothing.
		return fmt.Sprintf("%v", row)
	}
	return string(out)
}
