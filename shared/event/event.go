// Package event decodes and validates the JSON events of a dataset into columns of its raw
// table.
//
// Decoding is the speed layer's largest cost, so an event is read by a single-pass scanner
// that keeps only the configured fields (scan.go): no parse tree, no allocation. It decides
// every event exactly as the fastjson parse tree it replaced (decodeTree): same rows, same
// reasons, same details, which a differential test and FuzzDecodeScanner check. Events the
// scanner does not take (invalid JSON, whose detail is fastjson's error; escaped keys on a
// configured path; arrays under a path with an index) go through that tree. BenchmarkDecode
// compares the two. Fields are dotted paths into nested objects. The time is an
// RFC 3339 string (fractions and offsets allowed) or epoch milliseconds. Numeric fields take
// JSON numbers; dimensions and distinct-count keys take strings, or numbers rendered as their
// JSON text. Null or missing dimensions are the empty string, missing numbers are NULL.
//
// An event that cannot be used is rejected with one of the Reasons and a detail naming the
// field; the caller writes it to <ds>_rejects.
package event

import (
	"database/sql"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/valyala/fastjson"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/metric"
)

// Reason says why an event was rejected.
type Reason string

// Rejection reasons.
const (
	InvalidJSON Reason = "invalid_json" // not JSON, or not a JSON object
	MissingTime Reason = "missing_time" // no time field, or null
	BadTime     Reason = "bad_time"     // a time that is neither RFC 3339 nor epoch milliseconds
	FutureTime  Reason = "future_time"  // later than now plus the allowed skew
	TooOld      Reason = "too_old"      // before 1970 or older than the raw retention
	BadType     Reason = "bad_type"     // a field of the wrong JSON type
	TooLarge    Reason = "too_large"    // a payload over max_event_bytes
	// InsertRefused is not the decoder's: ClickHouse refused the decoded row itself (a value a
	// type, a CHECK or MATERIALIZED expression rejects); the speed layer writes it.
	InsertRefused Reason = "insert_refused"
)

// DecoderReasons are the reasons Decode returns.
var DecoderReasons = []Reason{InvalidJSON, MissingTime, BadTime, FutureTime, TooOld, BadType, TooLarge}

// Reasons lists every reason, for metrics and tests.
var Reasons = []Reason{InvalidJSON, MissingTime, BadTime, FutureTime, TooOld, BadType, TooLarge, InsertRefused}

// Limits bound what the decoder accepts.
type Limits struct {
	// MaxBytes is the largest payload accepted; 0 accepts any.
	MaxBytes int
	// FutureSkew is how far past now an event time may be.
	FutureSkew time.Duration
	// MaxAge, when positive, rejects events older than now minus MaxAge (the raw retention:
	// such a row would be dropped with its partition).
	MaxAge time.Duration
}

// Row is one decoded event. Its slices are reused by the next Decode.
type Row struct {
	ID   string
	Time time.Time
	// Dims holds the dimensions in config order.
	Dims []string
	// Nums and Keys hold the value columns (config.Dataset.ValueColumns) in order: Nums[i]
	// for a numeric column, Keys[i] for a distinct-count key column.
	Nums []sql.NullFloat64
	Keys []string
}

// Decoder decodes the events of one dataset. It is not safe for concurrent use: each
// consumer goroutine has its own.
type Decoder struct {
	// Transient makes the id and key strings of a Row point into the event, or for a string
	// with escapes into the decoder's buffer (no copy, no allocation): they are then valid
	// only while the event's bytes are, and until the next Decode. For a caller that copies
	// them at once (the speed layer's columns).
	Transient bool

	lim      Limits
	p        fastjson.Parser
	idPath   []string
	timePath []string
	dimPaths [][]string
	valPaths [][]string
	valNames []string
	isKey    []bool
	dimNames []string
	// The scanner's state (scan.go).
	sc scanner
	// intern holds the dimension values seen, so that a value repeated by millions of events
	// is one string. It stops growing at internMax entries per dimension.
	intern []map[string]string
}

const internMax = 1 << 14

// NewDecoder returns a decoder for a dataset.
func NewDecoder(d *config.Dataset, lim Limits) *Decoder {
	dec := &Decoder{lim: lim, timePath: strings.Split(d.TimeField, ".")}
	if d.IDField != "" {
		dec.idPath = strings.Split(d.IDField, ".")
	}
	for _, dim := range d.Dimensions {
		dec.dimPaths = append(dec.dimPaths, strings.Split(dim.Field, "."))
		dec.dimNames = append(dec.dimNames, dim.Name)
		dec.intern = append(dec.intern, map[string]string{})
	}
	for _, c := range d.ValueColumns() {
		dec.valPaths = append(dec.valPaths, strings.Split(c.Field, "."))
		dec.valNames = append(dec.valNames, c.Field)
		dec.isKey = append(dec.isKey, c.Type == metric.KeyType)
	}
	dec.sc = newScanner(dec)
	return dec
}

// KeyID is the id of an event without one: stable for one Kafka record, so that replays of
// the record deduplicate.
func KeyID(topic string, partition int32, offset int64) string {
	b := make([]byte, 0, len(topic)+24)
	b = append(b, "k:"...)
	b = append(b, topic...)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(partition), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, offset, 10)
	return string(b)
}

// Decode decodes one event into r. On rejection it returns the reason and a detail naming the
// field; r is then unspecified. now is the clock the time limits are checked against.
//
// The event goes through the field scanner (scan.go); what the scanner does not take (not an
// object, not JSON, an escaped key on a configured path, an array on a path with an index,
// deep nesting) goes through the fastjson tree, which decides the same way.
func (dec *Decoder) Decode(value []byte, topic string, partition int32, offset int64, now time.Time, r *Row) (Reason, string) {
	if dec.lim.MaxBytes > 0 && len(value) > dec.lim.MaxBytes {
		return TooLarge, fmt.Sprintf("%d bytes, over max_event_bytes %d", len(value), dec.lim.MaxBytes)
	}
	if dec.scan(value) {
		reason, detail := dec.decodeScanned(topic, partition, offset, now, r)
		dec.sc.ev = nil // the event is the caller's again
		return reason, detail
	}
	dec.sc.ev = nil
	return dec.decodeTree(value, topic, partition, offset, now, r)
}

// decodeTree is Decode through a fastjson parse tree: the reference the scanner is tested
// against, and its fallback.
func (dec *Decoder) decodeTree(value []byte, topic string, partition int32, offset int64, now time.Time, r *Row) (Reason, string) {
	if dec.lim.MaxBytes > 0 && len(value) > dec.lim.MaxBytes {
		return TooLarge, fmt.Sprintf("%d bytes, over max_event_bytes %d", len(value), dec.lim.MaxBytes)
	}
	v, err := dec.p.ParseBytes(value)
	if err != nil {
		return InvalidJSON, err.Error()
	}
	if v.Type() != fastjson.TypeObject {
		return InvalidJSON, "the event is a JSON " + v.Type().String() + ", not an object"
	}

	// Time.
	tv := v.Get(dec.timePath...)
	if tv == nil || tv.Type() == fastjson.TypeNull {
		return MissingTime, "no " + strings.Join(dec.timePath, ".")
	}
	t, reason, detail := parseTime(tv)
	if reason, detail := dec.checkTime(t, reason, detail, now); reason != "" {
		return reason, detail
	}
	r.Time = t

	// Id.
	r.ID = ""
	if dec.idPath != nil {
		if iv := v.Get(dec.idPath...); iv != nil {
			switch iv.Type() {
			case fastjson.TypeString:
				r.ID = dec.string(iv.GetStringBytes())
			case fastjson.TypeNumber:
				r.ID = string(iv.MarshalTo(nil))
			case fastjson.TypeNull:
			default:
				return BadType, fmt.Sprintf("%s: want a string or a number, got %s", strings.Join(dec.idPath, "."), iv.Type())
			}
		}
	}
	if r.ID == "" {
		r.ID = KeyID(topic, partition, offset)
	}

	// Dimensions.
	r.Dims = r.Dims[:0]
	for i, path := range dec.dimPaths {
		s, ok := dec.str(v.Get(path...), dec.intern[i])
		if !ok {
			return BadType, fmt.Sprintf("%s: want a string or a number, got %s", strings.Join(path, "."), v.Get(path...).Type())
		}
		r.Dims = append(r.Dims, s)
	}

	// Values.
	r.Nums = r.Nums[:0]
	r.Keys = r.Keys[:0]
	for i, path := range dec.valPaths {
		fv := v.Get(path...)
		if dec.isKey[i] {
			s, ok := dec.str(fv, nil)
			if !ok {
				return BadType, fmt.Sprintf("%s: want a string or a number, got %s", dec.valNames[i], fv.Type())
			}
			r.Nums = append(r.Nums, sql.NullFloat64{})
			r.Keys = append(r.Keys, s)
			continue
		}
		r.Keys = append(r.Keys, "")
		if fv == nil || fv.Type() == fastjson.TypeNull {
			r.Nums = append(r.Nums, sql.NullFloat64{})
			continue
		}
		if fv.Type() != fastjson.TypeNumber {
			return BadType, fmt.Sprintf("%s: want a number, got %s", dec.valNames[i], fv.Type())
		}
		f, err := fv.Float64()
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return BadType, fmt.Sprintf("%s: %s is not a finite number", dec.valNames[i], fv.MarshalTo(nil))
		}
		r.Nums = append(r.Nums, sql.NullFloat64{Float64: f, Valid: true})
	}
	return "", ""
}

// str returns a dimension or key value: a string, a number's JSON text, "" for null or
// missing. Other types are not accepted.
// checkTime turns a parsed time (or its parse failure: reason and detail) into the reject of an
// event whose time is unparseable, older than raw keeps or too far ahead of now ("" if none).
func (dec *Decoder) checkTime(t time.Time, reason Reason, detail string, now time.Time) (Reason, string) {
	if reason != "" {
		return reason, strings.Join(dec.timePath, ".") + ": " + detail
	}
	if t.Before(time.Unix(0, 0)) || (dec.lim.MaxAge > 0 && t.Before(now.Add(-dec.lim.MaxAge))) {
		return TooOld, fmt.Sprintf("%s: %s is older than the raw retention", strings.Join(dec.timePath, "."), t.Format(time.RFC3339))
	}
	if t.After(now.Add(dec.lim.FutureSkew)) {
		return FutureTime, fmt.Sprintf("%s: %s is more than %s ahead of %s", strings.Join(dec.timePath, "."),
			t.Format(time.RFC3339), dec.lim.FutureSkew, now.UTC().Format(time.RFC3339))
	}
	return "", ""
}

func (dec *Decoder) str(v *fastjson.Value, intern map[string]string) (string, bool) {
	if v == nil {
		return "", true
	}
	var b []byte
	switch v.Type() {
	case fastjson.TypeString:
		b = v.GetStringBytes()
	case fastjson.TypeNumber:
		b = v.MarshalTo(nil)
	case fastjson.TypeNull:
		return "", true
	default:
		return "", false
	}
	if intern == nil {
		return dec.string(b), true
	}
	if s, ok := intern[string(b)]; ok {
		return s, true
	}
	s := string(b)
	if len(intern) < internMax {
		intern[s] = s
	}
	return s, true
}

// string returns b as a string: a copy, or b itself when the decoder is Transient.
func (dec *Decoder) string(b []byte) string {
	if dec.Transient && len(b) > 0 {
		return unsafe.String(&b[0], len(b))
	}
	return string(b)
}

// maxMillis is the largest epoch-milliseconds time accepted (DateTime's end, 2106).
const maxMillis = int64(math.MaxUint32) * 1000

func parseTime(v *fastjson.Value) (time.Time, Reason, string) {
	switch v.Type() {
	case fastjson.TypeString:
		// Parsed in place: time.Parse keeps nothing of its input but in its error.
		b := v.GetStringBytes()
		s := unsafe.String(unsafe.SliceData(b), len(b))
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return time.Time{}, BadTime, fmt.Sprintf("%q is neither RFC 3339 nor epoch milliseconds", string(b))
		}
		return t.UTC(), "", ""
	case fastjson.TypeNumber:
		if ms, err := v.Int64(); err == nil {
			if ms > maxMillis {
				return time.Time{}, FutureTime, fmt.Sprintf("%d milliseconds is past 2106", ms)
			}
			return time.UnixMilli(ms).UTC(), "", ""
		}
		f, err := v.Float64()
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || math.Abs(f) > float64(maxMillis) {
			return time.Time{}, BadTime, fmt.Sprintf("%s is not epoch milliseconds", v.MarshalTo(nil))
		}
		return time.UnixMicro(int64(f * 1000)).UTC(), "", ""
	default:
		return time.Time{}, BadTime, "want an RFC 3339 string or epoch milliseconds, got " + v.Type().String()
	}
}
