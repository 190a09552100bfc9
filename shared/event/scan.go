package event

import (
	"bytes"
	"database/sql"
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unsafe"

	"github.com/valyala/fastjson"
	"github.com/valyala/fastjson/fastfloat"
)

// The field scanner reads an event once, left to right, and keeps only the raw text of the
// configured fields: no parse tree, no copy of the event, no allocation. It accepts exactly
// the JSON fastjson accepts (fastjson checks the structure and the numbers' characters, not
// the escapes or the UTF-8 inside strings), and finds the value fastjson's Get would: the
// first of duplicate keys, nothing below a value that is not an object. Where matching
// fastjson would take more than that, the scanner gives the event up and Decode parses it
// with fastjson:
//   - anything fastjson rejects (its error message is the reject's detail);
//   - a top-level value that is not an object;
//   - an escaped key in an object on a configured path (fastjson matches raw keys first, then
//     unescaped ones);
//   - an array where a configured path goes on with an array index ("items.0.price");
//   - nesting deeper than maxScanDepth.
// Strings are unescaped only when a configured field is one, as fastjson does it (best
// effort: invalid escapes are kept as they are).

// maxScanDepth is below fastjson.MaxDepth: deeper events go to fastjson, which rejects them
// past its limit.
const maxScanDepth = fastjson.MaxDepth - 10

// recentSize is the number of recent values kept per dimension: a power of two.
const recentSize = 64

// scanner is a Decoder's scanning state.
type scanner struct {
	nodes []*node // nodes[0] is the event's object
	// By node id: the value found for a configured field, and whether the node's key was met
	// in this event (a later duplicate is skipped).
	vals []field
	seen []bool
	// ev is the event scanned; buf holds its unescaped strings.
	ev  []byte
	buf []byte
	// recent holds, per dimension, a few of its values (see scannedStr).
	recent [][recentSize]string

	time, id   int // node ids; id is -1 without an id field
	dims, nums []int
}

// node is an object key on a configured path.
type node struct {
	id   int
	name string
	kids []*node
	// word is the name as a little-endian word when it has up to 8 bytes.
	word uint64
	// byLen holds the kids by the length of their name, for a key to be compared with few.
	byLen [][]*node
	// indexKids is set when a kid's name is an array index, which fastjson's Get applies to
	// an array.
	indexKids bool
}

// field is the raw text of a value found: a string's between its quotes (escapes kept), a
// number's as written.
//
// It holds offsets, not a slice: no pointer, so filling and clearing fields needs no write
// barrier.
type field struct {
	t          fastjson.Type
	start, end int  // the raw text is the event's [start:end]
	esc        bool // a string with a backslash
	set        bool
}

func newScanner(dec *Decoder) scanner {
	sc := scanner{nodes: []*node{{}}, id: -1}
	path := func(p []string) int {
		n := sc.nodes[0]
	next:
		for _, name := range p {
			for _, k := range n.kids {
				if k.name == name {
					n = k
					continue next
				}
			}
			k := &node{id: len(sc.nodes), name: name}
			if len(name) <= 8 {
				var w [8]byte
				copy(w[:], name)
				k.word = binary.LittleEndian.Uint64(w[:])
			}
			if _, err := strconv.Atoi(name); err == nil {
				n.indexKids = true
			}
			sc.nodes = append(sc.nodes, k)
			n.kids = append(n.kids, k)
			n = k
		}
		return n.id
	}
	sc.time = path(dec.timePath)
	if dec.idPath != nil {
		sc.id = path(dec.idPath)
	}
	for _, p := range dec.dimPaths {
		sc.dims = append(sc.dims, path(p))
	}
	for _, p := range dec.valPaths {
		sc.nums = append(sc.nums, path(p))
	}
	for _, n := range sc.nodes {
		for _, k := range n.kids {
			for len(n.byLen) <= len(k.name) {
				n.byLen = append(n.byLen, nil)
			}
			n.byLen[len(k.name)] = append(n.byLen[len(k.name)], k)
		}
	}
	sc.vals = make([]field, len(sc.nodes))
	sc.recent = make([][recentSize]string, len(dec.dimPaths))
	sc.seen = make([]bool, len(sc.nodes))
	return sc
}

// scan finds the configured fields of an event; false gives the event to fastjson.
func (dec *Decoder) scan(b []byte) bool {
	sc := &dec.sc
	clear(sc.vals)
	clear(sc.seen)
	sc.ev, sc.buf = b, sc.buf[:0]
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i, ok := sc.object(b, i+1, sc.nodes[0], 1)
	return ok && skipWS(b, i) == len(b)
}

// wordMask[n] keeps the low n bytes of a word.
var wordMask = [9]uint64{0, 0xff, 0xffff, 0xffffff, 0xffffffff, 0xffffffffff, 0xffffffffffff, 0xffffffffffffff, 0xffffffffffffffff}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

// object scans the members of an object after its '{' and returns the index after its '}'.
// n is the object's node, nil for an object no configured path goes into.
func (sc *scanner) object(b []byte, i int, n *node, depth int) (int, bool) {
	i = skipWS(b, i)
	if i >= len(b) {
		return i, false
	}
	if b[i] == '}' {
		return i + 1, true
	}
	for {
		i = skipWS(b, i)
		if i >= len(b) || b[i] != '"' {
			return i, false
		}
		end, esc, ok := stringEnd(b, i+1)
		if !ok {
			return i, false
		}
		var kid *node
		if n != nil {
			if esc {
				return i, false
			}
			if l := end - i - 1; l < len(n.byLen) {
				key := b[i+1 : end]
				// Keys of up to 8 bytes are compared as one word when the event has 8
				// bytes from the key on (it does but at its very end).
				var w uint64
				short := l <= 8 && i+9 <= len(b)
				if short {
					w = binary.LittleEndian.Uint64(b[i+1:]) & wordMask[l]
				}
				for _, k := range n.byLen[l] {
					if short && k.word == w || !short && k.name == string(key) {
						if !sc.seen[k.id] {
							sc.seen[k.id] = true
							kid = k
						}
						break
					}
				}
			}
		}
		i = skipWS(b, end+1)
		if i >= len(b) || b[i] != ':' {
			return i, false
		}
		i = skipWS(b, i+1)
		if kid == nil && i < len(b) && b[i] == '"' {
			// A string no field wants, the most common value skipped.
			if i, _, ok = stringEnd(b, i+1); !ok {
				return i, false
			}
			i++
		} else if i, ok = sc.value(b, i, kid, depth); !ok {
			return i, false
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return i, false
		}
		switch b[i] {
		case ',':
			i++
		case '}':
			return i + 1, true
		default:
			return i, false
		}
	}
}

// array scans the elements of an array after its '[' and returns the index after its ']'.
func (sc *scanner) array(b []byte, i int, depth int) (int, bool) {
	i = skipWS(b, i)
	if i >= len(b) {
		return i, false
	}
	if b[i] == ']' {
		return i + 1, true
	}
	for {
		var ok bool
		i, ok = sc.value(b, skipWS(b, i), nil, depth)
		if !ok {
			return i, false
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return i, false
		}
		switch b[i] {
		case ',':
			i++
		case ']':
			return i + 1, true
		default:
			return i, false
		}
	}
}

// value scans the value at b[i] (depth is its container's) and returns the index after it.
// n is the value's node, nil if it is on no configured path; the value is kept at n's id.
func (sc *scanner) value(b []byte, i int, n *node, depth int) (int, bool) {
	depth++
	if i >= len(b) || depth > maxScanDepth {
		return i, false
	}
	var f field
	switch c := b[i]; c {
	case '{':
		kids := n
		if n != nil && len(n.kids) == 0 {
			kids = nil
		}
		var ok bool
		if i, ok = sc.object(b, i+1, kids, depth); !ok {
			return i, false
		}
		f.t = fastjson.TypeObject
	case '[':
		if n != nil && n.indexKids {
			return i, false
		}
		var ok bool
		if i, ok = sc.array(b, i+1, depth); !ok {
			return i, false
		}
		f.t = fastjson.TypeArray
	case '"':
		end, esc, ok := stringEnd(b, i+1)
		if !ok {
			return i, false
		}
		f.t, f.start, f.end, f.esc = fastjson.TypeString, i+1, end, esc
		i = end + 1
	case 't':
		if !bytes.HasPrefix(b[i:], []byte("true")) {
			return i, false
		}
		f.t, i = fastjson.TypeTrue, i+4
	case 'f':
		if !bytes.HasPrefix(b[i:], []byte("false")) {
			return i, false
		}
		f.t, i = fastjson.TypeFalse, i+5
	case 'n':
		switch {
		case bytes.HasPrefix(b[i:], []byte("null")):
			f.t, i = fastjson.TypeNull, i+4
		case len(b)-i >= 3 && isInfNaN(b[i:i+3]):
			f.t, f.start, f.end, i = fastjson.TypeNumber, i, i+3, i+3
		default:
			return i, false
		}
	default:
		// A number as fastjson reads one: a run of its characters, or inf or nan with an
		// optional sign; its value is checked only when a configured field is read.
		j := i
		for j < len(b) && isNumChar(b[j]) {
			j++
		}
		if j < len(b) && (j == i || j == i+1 && (c == '-' || c == '+')) {
			if len(b)-j < 3 || !isInfNaN(b[j:j+3]) {
				return i, false
			}
			j += 3
		}
		f.t, f.start, f.end, i = fastjson.TypeNumber, i, j, j
	}
	if n != nil {
		f.set = true
		sc.vals[n.id] = f
	}
	return i, true
}

func isNumChar(c byte) bool {
	return c >= '0' && c <= '9' || c == '.' || c == '-' || c == 'e' || c == 'E' || c == '+'
}

// isInfNaN is fastjson's strings.EqualFold(s, "inf") || strings.EqualFold(s, "nan") for three
// bytes.
func isInfNaN(s []byte) bool {
	x := unsafe.String(&s[0], len(s))
	return strings.EqualFold(x, "inf") || strings.EqualFold(x, "nan")
}

// stringEnd returns the index of the quote that closes the string starting at b[i], and
// whether the string has a backslash. A backslash escapes the byte after it, so the string
// ends at the first quote after an even run of backslashes, as fastjson finds it.
func stringEnd(b []byte, i int) (end int, esc, ok bool) {
	for i < len(b) {
		// Eight bytes at a time up to a quote or a backslash.
		for i+8 <= len(b) {
			x := binary.LittleEndian.Uint64(b[i:])
			m := hasByte(x, '"') | hasByte(x, '\\')
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) / 8
			break
		}
		if i >= len(b) {
			break
		}
		switch b[i] {
		case '"':
			return i, esc, true
		case '\\':
			esc = true
			i += 2
		default:
			i++
		}
	}
	return 0, false, false
}

// hasByte has the high bit set in the bytes of x equal to c, and may have it in bytes above
// the first such: the lowest set bit marks the first match.
func hasByte(x uint64, c byte) uint64 {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	y := x ^ (lo * uint64(c))
	return (y - lo) & ^y & hi
}

// raw returns a field's raw text.
func (sc *scanner) raw(f *field) []byte { return sc.ev[f.start:f.end] }

// str returns a string field's value, unescaped into sc.buf if it has escapes.
func (sc *scanner) str(f *field) []byte {
	raw := sc.raw(f)
	if !f.esc {
		return raw
	}
	start := len(sc.buf)
	sc.buf = appendUnescaped(sc.buf, unsafe.String(unsafe.SliceData(raw), len(raw)))
	return sc.buf[start:len(sc.buf):len(sc.buf)]
}

// decodeScanned is decodeTree on the fields the scanner found: the same checks in the same
// order, with the same details.
func (dec *Decoder) decodeScanned(topic string, partition int32, offset int64, now time.Time, r *Row) (Reason, string) {
	sc := &dec.sc

	// Time.
	tv := &sc.vals[sc.time]
	if !tv.set || tv.t == fastjson.TypeNull {
		return MissingTime, "no " + strings.Join(dec.timePath, ".")
	}
	t, reason, detail := sc.parseTime(tv)
	if reason, detail := dec.checkTime(t, reason, detail, now); reason != "" {
		return reason, detail
	}
	r.Time = t

	// Id.
	r.ID = ""
	if sc.id >= 0 {
		if iv := &sc.vals[sc.id]; iv.set {
			switch iv.t {
			case fastjson.TypeString:
				r.ID = dec.string(sc.str(iv))
			case fastjson.TypeNumber:
				r.ID = string(sc.raw(iv))
			case fastjson.TypeNull:
			default:
				return BadType, fmt.Sprintf("%s: want a string or a number, got %s", strings.Join(dec.idPath, "."), iv.t)
			}
		}
	}
	if r.ID == "" {
		r.ID = KeyID(topic, partition, offset)
	}

	// Dimensions.
	r.Dims = r.Dims[:0]
	for i, id := range sc.dims {
		s, ok := dec.scannedStr(&sc.vals[id], i)
		if !ok {
			return BadType, fmt.Sprintf("%s: want a string or a number, got %s", strings.Join(dec.dimPaths[i], "."), sc.vals[id].t)
		}
		r.Dims = append(r.Dims, s)
	}

	// Values.
	r.Nums = r.Nums[:0]
	r.Keys = r.Keys[:0]
	for i, id := range sc.nums {
		fv := &sc.vals[id]
		if dec.isKey[i] {
			s, ok := dec.scannedStr(fv, -1)
			if !ok {
				return BadType, fmt.Sprintf("%s: want a string or a number, got %s", dec.valNames[i], fv.t)
			}
			r.Nums = append(r.Nums, sql.NullFloat64{})
			r.Keys = append(r.Keys, s)
			continue
		}
		r.Keys = append(r.Keys, "")
		if !fv.set || fv.t == fastjson.TypeNull {
			r.Nums = append(r.Nums, sql.NullFloat64{})
			continue
		}
		if fv.t != fastjson.TypeNumber {
			return BadType, fmt.Sprintf("%s: want a number, got %s", dec.valNames[i], fv.t)
		}
		raw := sc.raw(fv)
		f, err := fastfloat.Parse(unsafe.String(unsafe.SliceData(raw), len(raw)))
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return BadType, fmt.Sprintf("%s: %s is not a finite number", dec.valNames[i], raw)
		}
		r.Nums = append(r.Nums, sql.NullFloat64{Float64: f, Valid: true})
	}
	return "", ""
}

// scannedStr is str for a scanned field; dim is the dimension's index, -1 for a key (not
// interned).
func (dec *Decoder) scannedStr(f *field, dim int) (string, bool) {
	if !f.set {
		return "", true
	}
	var b []byte
	switch f.t {
	case fastjson.TypeString:
		b = dec.sc.str(f)
	case fastjson.TypeNumber:
		b = dec.sc.raw(f)
	case fastjson.TypeNull:
		return "", true
	default:
		return "", false
	}
	if dim < 0 {
		return dec.string(b), true
	}
	// The recent values of the dimension, before its intern map: a hit costs a compare, not a
	// hash.
	slot := &dec.sc.recent[dim][recentSlot(b)]
	if *slot == string(b) && len(b) > 0 {
		return *slot, true
	}
	intern := dec.intern[dim]
	s, ok := intern[string(b)]
	if !ok {
		s = string(b)
		if len(intern) < internMax {
			intern[s] = s
		}
	}
	*slot = s
	return s, true
}

// recentSlot picks the slot of a dimension value in scanner.recent.
func recentSlot(b []byte) int {
	h := len(b)
	if len(b) > 0 {
		h = h*31 + int(b[0])*7 + int(b[len(b)-1])
	}
	return h & (recentSize - 1)
}

// parseTime is the package's parseTime for a scanned field.
func (sc *scanner) parseTime(f *field) (time.Time, Reason, string) {
	switch f.t {
	case fastjson.TypeString:
		b := sc.str(f)
		t, err := parseRFC3339(b)
		if err != nil {
			return time.Time{}, BadTime, fmt.Sprintf("%q is neither RFC 3339 nor epoch milliseconds", string(b))
		}
		return t.UTC(), "", ""
	case fastjson.TypeNumber:
		raw := sc.raw(f)
		s := unsafe.String(unsafe.SliceData(raw), len(raw))
		if ms, err := fastfloat.ParseInt64(s); err == nil {
			if ms > maxMillis {
				return time.Time{}, FutureTime, fmt.Sprintf("%d milliseconds is past 2106", ms)
			}
			return time.UnixMilli(ms).UTC(), "", ""
		}
		v, err := fastfloat.Parse(s)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v) > float64(maxMillis) {
			return time.Time{}, BadTime, fmt.Sprintf("%s is not epoch milliseconds", raw)
		}
		return time.UnixMicro(int64(v * 1000)).UTC(), "", ""
	default:
		return time.Time{}, BadTime, "want an RFC 3339 string or epoch milliseconds, got " + f.t.String()
	}
}

// parseRFC3339 is time.Parse(time.RFC3339Nano, b) in UTC. The shape events nearly always have
// (2026-03-10T11:30:00Z: up to 9 digits of fraction, Z or an offset ±hh:mm) is read here, its
// Unix time computed without time.Date's normalisation and the zone lookups of time.Parse;
// anything else is time.Parse's to decide. The fastjson path calls time.Parse itself, so the
// differential tests hold this to it.
func parseRFC3339(b []byte) (time.Time, error) {
	if sec, nsec, ok := fastRFC3339(b); ok {
		return time.Unix(sec, nsec).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, unsafe.String(unsafe.SliceData(b), len(b)))
	return t.UTC(), err
}

// fastRFC3339 reads YYYY-MM-DDThh:mm:ss[.f{1,9}](Z|±hh:mm) with time.Parse's ranges (a day
// that exists, second 59 at most, offsets below 24 hours); ok is false for anything else.
func fastRFC3339(b []byte) (sec, nsec int64, ok bool) {
	if len(b) < 20 || b[4] != '-' || b[7] != '-' || b[10] != 'T' || b[13] != ':' || b[16] != ':' {
		return 0, 0, false
	}
	hi, lo := d2(b), d2(b[2:])
	month, day, hour, minute, second := d2(b[5:]), d2(b[8:]), d2(b[11:]), d2(b[14:]), d2(b[17:])
	if hi < 0 || lo < 0 || month < 1 || month > 12 || day < 1 || hour < 0 || hour > 23 || minute < 0 || minute > 59 || second < 0 || second > 59 {
		return 0, 0, false
	}
	year := hi*100 + lo
	if day > 28 && day > daysIn(month, year) {
		return 0, 0, false
	}
	rest := b[19:]
	if rest[0] == '.' {
		n := 1
		for ; n < len(rest) && rest[n]-'0' <= 9; n++ {
			nsec = nsec*10 + int64(rest[n]-'0')
		}
		if n == 1 || n > 10 {
			return 0, 0, false
		}
		for range 10 - n {
			nsec *= 10
		}
		rest = rest[n:]
	}
	var off int64
	switch {
	case len(rest) == 1 && rest[0] == 'Z':
	case len(rest) == 6 && (rest[0] == '+' || rest[0] == '-') && rest[3] == ':':
		oh, om := d2(rest[1:]), d2(rest[4:])
		if oh < 0 || oh > 23 || om < 0 || om > 59 {
			return 0, 0, false
		}
		if off = (oh*60 + om) * 60; rest[0] == '-' {
			off = -off
		}
	default:
		return 0, 0, false
	}
	return daysFromCivil(year, month, day)*86400 + hour*3600 + minute*60 + second - off, nsec, true
}

// d2 is the two digits at the start of s, -1 when they are not digits.
func d2(s []byte) int64 {
	h, l := s[0]-'0', s[1]-'0'
	if h > 9 || l > 9 {
		return -1
	}
	return int64(h)*10 + int64(l)
}

// daysIn is the number of days of month in year (proleptic Gregorian, as package time).
func daysIn(month, year int64) int64 {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil is the number of days from 1970-01-01 to a date (Howard Hinnant's
// days_from_civil, for years 0 to 9999).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 {
		era = (y - 399) / 400
	}
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// appendUnescaped appends s unescaped to dst the way fastjson's unescapeStringBestEffort does:
// unknown or malformed escapes are kept as written, an unpaired surrogate escape too, and a
// pair that is not a valid surrogate pair becomes U+FFFD.
func appendUnescaped(dst []byte, s string) []byte {
	n := strings.IndexByte(s, '\\')
	if n < 0 {
		return append(dst, s...)
	}
	dst = append(dst, s[:n]...)
	s = s[n+1:]
	for len(s) > 0 {
		ch := s[0]
		s = s[1:]
		switch ch {
		case '"':
			dst = append(dst, '"')
		case '\\':
			dst = append(dst, '\\')
		case '/':
			dst = append(dst, '/')
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			if len(s) < 4 {
				dst = append(dst, `\u`...)
				break
			}
			xs := s[:4]
			x, err := strconv.ParseUint(xs, 16, 16)
			if err != nil {
				dst = append(dst, `\u`...)
				break
			}
			s = s[4:]
			if !utf16.IsSurrogate(rune(x)) {
				dst = append(dst, string(rune(x))...)
				break
			}
			if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
				dst = append(dst, `\u`...)
				dst = append(dst, xs...)
				break
			}
			x1, err := strconv.ParseUint(s[2:6], 16, 16)
			if err != nil {
				dst = append(dst, `\u`...)
				dst = append(dst, xs...)
				break
			}
			dst = append(dst, string(utf16.DecodeRune(rune(x), rune(x1)))...)
			s = s[6:]
		default:
			dst = append(dst, '\\', ch)
		}
		n = strings.IndexByte(s, '\\')
		if n < 0 {
			dst = append(dst, s...)
			break
		}
		dst = append(dst, s[:n]...)
		s = s[n+1:]
	}
	return dst
}
