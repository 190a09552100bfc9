package rawbatch

import (
	"bufio"
	"bytes"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/ClickHouse/ch-go/compress"
	"github.com/ClickHouse/ch-go/proto"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/event"
)

func demo(tb testing.TB) *config.Dataset {
	cfg, err := config.Parse("<demo>", config.DemoYAML, nil)
	if err != nil {
		tb.Fatal(err)
	}
	return &cfg.Datasets[0]
}

// benchRows are n rows of the demo dataset as the decoder gives them.
func benchRows(isKey []bool, n int) []event.Row {
	rows := make([]event.Row, n)
	t0 := time.Unix(1_700_000_000, 0).UTC()
	for i := range rows {
		r := &rows[i]
		r.ID = fmt.Sprintf("%08x-1c2d-4e5f-8a9b-%012x", i, i*7919)
		r.Time = t0.Add(time.Duration(i) * time.Millisecond)
		r.Dims = []string{[]string{"view", "click", "purchase"}[i%3], []string{"DE", "FR", "US", "GB"}[i%4], []string{"ios", "android", "web"}[i%3]}
		for _, k := range isKey {
			if k {
				r.Keys = append(r.Keys, fmt.Sprintf("u%d", i%50000))
				r.Nums = append(r.Nums, sql.NullFloat64{})
			} else {
				r.Keys = append(r.Keys, "")
				r.Nums = append(r.Nums, sql.NullFloat64{Float64: float64(i%1000) / 100, Valid: i%4 != 0})
			}
		}
	}
	return rows
}

// BenchmarkColumnsAdd appends 100k decoded rows to columns that kept their capacity from the
// previous flush, as the speed layer's recycled buffers do.
func BenchmarkColumnsAdd(b *testing.B) {
	ds := demo(b)
	w := NewWriter("db.events_raw", ds, nil)
	rows := benchRows(w.IsKey(), 100_000)
	c := New(len(ds.Dimensions), len(w.IsKey()))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c.Reset()
		for i := range rows {
			c.Add(&rows[i], int64(i), false, w.IsKey())
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(rows)), "ns/row")
}

// BenchmarkEncode encodes a 100k-row flush of four partitions into LZ4 frames, as an insert
// writes it (the network left out).
func BenchmarkEncode(b *testing.B) {
	ds := demo(b)
	w := NewWriter("db.events_raw", ds, nil)
	rows := benchRows(w.IsKey(), 100_000)
	var parts []Part
	for p := range 4 {
		c := New(len(ds.Dimensions), len(w.IsKey()))
		for i := p; i < len(rows); i += 4 {
			c.Add(&rows[i], int64(i), false, w.IsKey())
		}
		parts = append(parts, Part{Topic: "events", Partition: int32(p), Rows: &c})
	}
	types := map[string]string{}
	for i, n := range w.names {
		types[n] = w.types[i]
	}
	out := &countWriter{}
	c := &nconn{w: bufio.NewWriterSize(out, 64<<10), lz4: compress.NewWriter(compress.LevelZero, compress.LZ4), revision: 54412}
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		n, cols := w.columns(parts)
		if err := c.writeData(n, cols, types); err != nil {
			b.Fatal(err)
		}
		if err := c.w.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(rows)), "ns/row")
	b.ReportMetric(float64(out.n)/float64(b.N*len(rows)), "wire-bytes/row")
}

type countWriter struct{ n int }

func (w *countWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// TestEncodeFrames checks the framing: no frame holds more than frameSize bytes, a block of
// several megabytes is split, and the frames decompress to the block encoded in one piece.
func TestEncodeFrames(t *testing.T) {
	ds := demo(t)
	w := NewWriter("db.events_raw", ds, nil)
	rows := benchRows(w.IsKey(), 50_000)
	c := New(len(ds.Dimensions), len(w.IsKey()))
	for i := range rows {
		c.Add(&rows[i], int64(i), i%2 == 0, w.IsKey())
	}
	types := map[string]string{}
	for i, n := range w.names {
		types[n] = w.types[i]
	}
	n, cols := w.columns([]Part{{Topic: "events", Partition: 3, Rows: &c}})
	var framed bytes.Buffer
	nc := &nconn{w: bufio.NewWriter(&framed), lz4: compress.NewWriter(compress.LevelZero, compress.LZ4), revision: 54460}
	if err := nc.writeData(n, cols, types); err != nil {
		t.Fatal(err)
	}
	if err := nc.w.Flush(); err != nil {
		t.Fatal(err)
	}
	// The same block in one buffer.
	var whole proto.Buffer
	proto.Block{Info: proto.BlockInfo{BucketNum: -1}, Columns: len(cols), Rows: n}.EncodeAware(&whole, 54460)
	for _, col := range cols {
		whole.PutString(col.name)
		whole.PutString(col.typ)
		whole.PutBool(false)
		col.encode(&whole)
	}
	// The data packet's code and (empty) table name are not compressed; frames follow:
	// 16 bytes of checksum, the method, the compressed size (with its 9-byte header), the
	// uncompressed size.
	data := framed.Bytes()[2:]
	frames := 0
	for at := 0; at < len(data); frames++ {
		size := int(binary.LittleEndian.Uint32(data[at+17:]))
		plain := int(binary.LittleEndian.Uint32(data[at+21:]))
		if plain > frameSize {
			t.Errorf("frame %d holds %d bytes, more than %d", frames, plain, frameSize)
		}
		at += 16 + size
	}
	if len(whole.Buf) < 2*frameSize || frames < 3 {
		t.Errorf("%d frames for %d bytes", frames, len(whole.Buf))
	}
	plain := make([]byte, len(whole.Buf))
	r := compress.NewReader(bytes.NewReader(data))
	if _, err := io.ReadFull(r, plain); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.Read(make([]byte, 1)); n != 0 {
		t.Error("the frames hold more than the block")
	}
	if !bytes.Equal(plain, whole.Buf) {
		t.Errorf("the frames decompress to %d bytes that differ from the %d of the block", len(plain), len(whole.Buf))
	}
}
