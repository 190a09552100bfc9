// Package dashboards holds the built-in dashboards that `lambda serve` serves at `/`: a
// static page (ui/: index.html, app.js, app.css and a vendored uPlot) and the dashboard
// definitions (defs/*.json), both embedded in the binary so the page works offline.
//
// The served tree (FS) has the page at its root, the definitions under defs/ and one
// generated file, dashboards.json, that lists every definition so the page needs a single
// request. Every URL the page uses is relative, so it works behind a path prefix.
package dashboards

import (
	"bytes"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"
)

//go:embed ui defs
var embedded embed.FS

// IndexFile is the generated file of the served tree that lists every definition.
const IndexFile = "dashboards.json"

// FS returns the embedded dashboards as the tree to serve at `/`: index.html at its root.
func FS() fs.FS { return New(embedded) }

// DirFS returns the tree to serve from a folder on disk laid out like this package (ui/ and
// defs/), for editing dashboards without rebuilding. Files are read at every request.
func DirFS(dir string) fs.FS { return New(os.DirFS(dir)) }

// New returns the tree to serve built from src, which holds ui/ and defs/. The root of the
// result is src's ui/ folder, plus defs/ and the generated IndexFile.
func New(src fs.FS) fs.FS { return tree{src: src} }

type tree struct{ src fs.FS }

func (t tree) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	switch {
	case name == IndexFile:
		b, err := index(t.src)
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &memFile{Reader: bytes.NewReader(b), name: name, size: int64(len(b))}, nil
	case name == "defs" || strings.HasPrefix(name, "defs/"):
		return t.src.Open(name)
	default:
		return t.src.Open(path.Join("ui", name))
	}
}

// index renders IndexFile: {"dashboards": [...]} in file name order.
func index(src fs.FS) ([]byte, error) {
	defs, err := Load(src)
	if err != nil {
		return nil, err
	}
	return json.Marshal(struct {
		Dashboards []Dashboard `json:"dashboards"`
	}{defs})
}

// memFile is a generated file; it seeks so http.FileServer can serve ranges.
type memFile struct {
	*bytes.Reader
	name string
	size int64
}

func (f *memFile) Stat() (fs.FileInfo, error) { return memInfo{f.name, f.size}, nil }
func (f *memFile) Close() error               { return nil }

type memInfo struct {
	name string
	size int64
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) Mode() fs.FileMode  { return 0o444 }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return false }
func (i memInfo) Sys() any           { return nil }

// Definitions returns the embedded dashboard definitions in file name order.
func Definitions() ([]Dashboard, error) { return Load(embedded) }

// Load reads and validates every defs/*.json of src, in file name order. A definition's ID
// is its file name without .json.
func Load(src fs.FS) ([]Dashboard, error) {
	names, err := fs.Glob(src, "defs/*.json")
	if err != nil {
		return nil, fmt.Errorf("cannot list dashboard definitions: %w", err)
	}
	sort.Strings(names)
	out := make([]Dashboard, 0, len(names))
	for _, name := range names {
		b, err := fs.ReadFile(src, name)
		if err != nil {
			return nil, fmt.Errorf("cannot read dashboard definition: %w", err)
		}
		d, err := Parse(name, b)
		if err != nil {
			return nil, err
		}
		d.ID = strings.TrimSuffix(path.Base(name), ".json")
		out = append(out, d)
	}
	return out, nil
}

// Parse decodes one definition strictly (unknown keys are errors) and validates it; errors
// name the file and the field.
func Parse(name string, data []byte) (Dashboard, error) {
	var d Dashboard
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&d); err != nil {
		return d, fmt.Errorf("%s: %w", name, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return d, fmt.Errorf("%s: trailing data after the definition", name)
	}
	if err := d.Validate(); err != nil {
		return d, fmt.Errorf("%s: %w", name, err)
	}
	return d, nil
}
