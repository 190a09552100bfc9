package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"unicode/utf8"
)

// recordFile reads the records of one file for lambda import: JSON lines (an event a line),
// or CSV with a header row whose names are event fields (a dotted name such as ctx.device
// becomes a nested object). Either may be gzip-compressed, told by the .gz extension or by
// the magic bytes. The format is told by the extension (.json, .jsonl, .ndjson, .csv, before
// .gz) or else by the first byte: "{" is JSON lines.
type recordFile struct {
	path   string
	f      *os.File
	count  *countingReader // bytes of the file read, for progress
	r      *bufio.Reader   // the decompressed content
	csv    bool
	size   int64
	header *csvHeader
	cr     *csv.Reader
	line   int64
	long   []byte
	out    []byte
}

func openRecords(path string) (*recordFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	rf := &recordFile{path: path, f: f, size: st.Size(), count: &countingReader{r: f}}
	br := bufio.NewReaderSize(rf.count, 1<<20)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			_ = f.Close()
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		br = bufio.NewReaderSize(zr, 1<<20)
	} else if strings.HasSuffix(path, ".gz") {
		_ = f.Close()
		return nil, fmt.Errorf("%s: named .gz but not gzip-compressed", path)
	}
	rf.r = br
	switch ext := filepath.Ext(strings.TrimSuffix(path, ".gz")); ext {
	case ".csv":
		rf.csv = true
	case ".json", ".jsonl", ".ndjson":
	default:
		// Sniff: the first non-blank byte of JSON lines is "{".
		peek, _ := br.Peek(4096)
		first := bytes.TrimLeft(peek, " \t\r\n\ufeff")
		rf.csv = len(first) > 0 && first[0] != '{'
	}
	if rf.csv {
		if err := rf.readHeader(); err != nil {
			_ = f.Close()
			return nil, err
		}
	}
	return rf, nil
}

// Close closes the file.
func (rf *recordFile) Close() error { return rf.f.Close() }

// Read returns the bytes of the file read so far (compressed bytes for gzip) and its size.
func (rf *recordFile) Progress() (read, size int64) { return rf.count.n.Load(), rf.size }

// Next returns the next record as a JSON object and its line number (of its first line for
// CSV); io.EOF at the end. Blank lines are skipped. The bytes are valid until the next call.
// A CSV row that cannot be read comes back as bad, saying why, with the line it starts on.
func (rf *recordFile) Next() (value []byte, line int64, bad string, err error) {
	if rf.csv {
		return rf.nextCSV()
	}
	v, l, err := rf.nextLine()
	return v, l, "", err
}

func (rf *recordFile) nextLine() ([]byte, int64, error) {
	for {
		b, err := rf.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: gather it (the decoder rejects it when it is over
			// max_event_bytes).
			rf.long = append(rf.long[:0], b...)
			for errors.Is(err, bufio.ErrBufferFull) {
				b, err = rf.r.ReadSlice('\n')
				rf.long = append(rf.long, b...)
			}
			b = rf.long
		}
		if len(b) == 0 && err != nil {
			if errors.Is(err, io.EOF) {
				return nil, rf.line, io.EOF
			}
			return nil, rf.line, fmt.Errorf("%s: %w", rf.path, err)
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return nil, rf.line, fmt.Errorf("%s: %w", rf.path, err)
		}
		rf.line++
		b = bytes.TrimRight(b, "\r\n")
		if rf.line == 1 {
			b = bytes.TrimPrefix(b, []byte("\ufeff"))
		}
		if len(bytes.TrimSpace(b)) == 0 {
			continue
		}
		return b, rf.line, nil
	}
}

// csvHeader maps the CSV columns to the JSON object they make.
type csvHeader struct {
	root *csvNode
}

// csvNode is an object of the event: its keys in header order, each a column or an object.
type csvNode struct {
	keys     []string
	column   map[string]int
	children map[string]*csvNode
}

func (rf *recordFile) readHeader() error {
	rf.cr = csv.NewReader(rf.r)
	rf.cr.ReuseRecord = true
	rf.cr.FieldsPerRecord = -1
	names, err := rf.cr.Read()
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s: empty CSV file: the first row names the fields", rf.path)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", rf.path, err)
	}
	root := &csvNode{column: map[string]int{}, children: map[string]*csvNode{}}
	for i, name := range names {
		name = strings.TrimSpace(strings.TrimPrefix(name, "\ufeff"))
		if name == "" {
			return fmt.Errorf("%s:1: column %d has no name", rf.path, i+1)
		}
		n := root
		parts := strings.Split(name, ".")
		for j, p := range parts {
			last := j == len(parts)-1
			_, isCol := n.column[p]
			child, isObj := n.children[p]
			switch {
			case last && (isCol || isObj), !last && isCol:
				return fmt.Errorf("%s:1: column %q clashes with another column of the header", rf.path, name)
			case last:
				n.column[p] = i
				n.keys = append(n.keys, p)
			case !isObj:
				child = &csvNode{column: map[string]int{}, children: map[string]*csvNode{}}
				n.children[p] = child
				n.keys = append(n.keys, p)
			}
			if !last {
				n = child
			}
		}
	}
	rf.header = &csvHeader{root: root}
	return nil
}

func (rf *recordFile) nextCSV() ([]byte, int64, string, error) {
	for {
		rec, err := rf.cr.Read()
		var perr *csv.ParseError
		switch {
		case errors.Is(err, io.EOF):
			return nil, 0, "", io.EOF
		case errors.As(err, &perr):
			// One malformed row is a reject, not the end of the import.
			return nil, int64(perr.StartLine), "csv: " + perr.Err.Error(), nil
		case err != nil:
			return nil, 0, "", fmt.Errorf("%s: %w", rf.path, err)
		}
		line, _ := rf.cr.FieldPos(0)
		if len(rec) == 1 && strings.TrimSpace(rec[0]) == "" {
			continue
		}
		rf.out = rf.header.root.appendJSON(rf.out[:0], rec)
		return rf.out, int64(line), "", nil
	}
}

// appendJSON writes the object of a CSV record: an empty cell leaves its field out (missing),
// a cell that is a JSON number is a number, any other a string.
func (n *csvNode) appendJSON(b []byte, rec []string) []byte {
	b = append(b, '{')
	first := true
	for _, k := range n.keys {
		var v []byte
		if i, ok := n.column[k]; ok {
			if i >= len(rec) || rec[i] == "" {
				continue
			}
			if isJSONNumber(rec[i]) {
				v = []byte(rec[i])
			} else {
				v = appendJSONString(nil, rec[i])
			}
		} else {
			v = n.children[k].appendJSON(nil, rec)
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendJSONString(b, k)
		b = append(b, ':')
		b = append(b, v...)
	}
	return append(b, '}')
}

// isJSONNumber reports whether s is a number in JSON's grammar (so "007" and "1e" are not).
func isJSONNumber(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == j {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == j {
			return false
		}
	}
	return i == len(s)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
			i++
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			i++
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
		}
	}
	return append(b, '"')
}

// countingReader counts the bytes read through it; Progress reads the count from another
// goroutine.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// itoa formats n with thousands separators.
func itoa(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
