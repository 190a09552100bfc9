package config

import (
	"cmp"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong with a configuration: where it is (file, line, field) and what.
type Problem struct {
	File string
	// Line is the line of the field in the file, or of the nearest enclosing one that is
	// there; 0 when the value does not come from the file (the environment).
	Line int
	// Field is the path of the field, e.g. `datasets[0] (events).raw_retention`.
	Field string
	Msg   string

	column int // orders problems on one line
}

// Error formats the problem as `file:line: field: message`.
func (p Problem) Error() string {
	loc := p.File
	if p.Line > 0 {
		loc += ":" + strconv.Itoa(p.Line)
	}
	if p.Field == "" {
		return loc + ": " + p.Msg
	}
	return loc + ": " + p.Field + ": " + p.Msg
}

// Problems is every problem of a configuration, in the order of the file. It is the error
// that Load and Parse return.
type Problems []Problem

// Error lists the problems, one a line.
func (ps Problems) Error() string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Error()
	}
	return strings.Join(s, "\n")
}

// decoder decodes a YAML node tree into the configuration's structs field by field, so that
// one bad value does not hide the others, and every problem has its line. It replaces
// yaml.v3's own strict decoding, which stops at the first custom unmarshaler error and names
// Go types ("cannot unmarshal !!str `x` into int").
type decoder struct {
	probs []Problem
}

var (
	durationType = reflect.TypeFor[Duration]()
	byteSizeType = reflect.TypeFor[ByteSize]()
)

func (d *decoder) fail(n *yaml.Node, field, format string, args ...any) {
	d.probs = append(d.probs, Problem{Line: n.Line, column: n.Column, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// describe names what a node is, for "want X, got Y".
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	if n.Tag == "!!str" || n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
		return strconv.Quote(n.Value)
	}
	return n.Value
}

func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// decode sets v from n. A null leaves scalars and mappings as they are (their defaults) and
// empties lists, as yaml.v3 does.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, field string) {
	n = resolve(n)
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		if v.Kind() == reflect.Slice {
			v.Set(reflect.Zero(v.Type()))
		}
		return
	}
	if v.Type() == durationType {
		if n.Kind != yaml.ScalarNode {
			d.fail(n, field, "want a duration such as 30m or 48h, got %s", describe(n))
			return
		}
		dur, err := ParseDuration(n.Value)
		if err != nil {
			d.fail(n, field, "invalid duration %q (use a number with h, m, s or d: 2160h, 90d, 1h30m)", n.Value)
			return
		}
		v.SetInt(int64(dur))
		return
	}
	if v.Type() == byteSizeType {
		if n.Kind != yaml.ScalarNode {
			d.fail(n, field, "want a size such as 2GiB or 512MiB, got %s", describe(n))
			return
		}
		b, err := ParseByteSize(n.Value)
		if err != nil {
			d.fail(n, field, "%v", err)
			return
		}
		v.SetInt(b)
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.mapping(n, v, field)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, field, "want a list ([a, b], or one item a line starting with -), got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), fmt.Sprintf("%s[%d]", field, i))
		}
		v.Set(s)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.fail(n, field, "want a text value, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		var b bool
		if n.Kind != yaml.ScalarNode || n.Decode(&b) != nil {
			d.fail(n, field, "want true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64:
		var i int64
		if n.Kind != yaml.ScalarNode || n.Tag == "!!str" || n.Decode(&i) != nil {
			d.fail(n, field, "want a whole number, got %s", describe(n))
			return
		}
		v.SetInt(i)
	case reflect.Float64:
		var f float64
		if n.Kind != yaml.ScalarNode || n.Tag == "!!str" || n.Decode(&f) != nil {
			d.fail(n, field, "want a number, got %s", describe(n))
			return
		}
		v.SetFloat(f)
	default:
		panic(fmt.Sprintf("config: no decoding for %s (%s)", v.Type(), field))
	}
}

// mapping decodes a mapping into a struct by the fields' yaml tags.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, field string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, field, "want a mapping (key: value, or {key: value}), got %s", describe(n))
		return
	}
	keys := yamlKeys(v.Type())
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := resolve(n.Content[i]), n.Content[i+1]
		if k.Value == "<<" && k.Tag == "!!merge" {
			// A merge key: the mapping (or list of mappings) it names fills the same struct.
			val = resolve(val)
			if val.Kind == yaml.SequenceNode {
				for _, m := range val.Content {
					d.mapping(resolve(m), v, field)
				}
			} else {
				d.mapping(val, v, field)
			}
			continue
		}
		path := k.Value
		if field != "" {
			path = field + "." + k.Value
		}
		if line, dup := seen[k.Value]; dup {
			d.fail(k, path, "repeated key (first at line %d)", line)
			continue
		}
		seen[k.Value] = k.Line
		idx, ok := keys[k.Value]
		if !ok {
			d.fail(k, path, "%s", unknownKey(k.Value, v.Type()))
			continue
		}
		d.decode(val, v.Field(idx), path)
	}
}

// yamlKeys maps the yaml keys of a struct type to field indexes.
func yamlKeys(t reflect.Type) map[string]int {
	out := map[string]int{}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" && t.Field(i).IsExported() {
			out[name] = i
		}
	}
	return out
}

// unknownKey says that a key is not known here, suggesting the nearest known one or listing
// them.
func unknownKey(key string, t reflect.Type) string {
	var known []string
	for k := range yamlKeys(t) {
		known = append(known, k)
	}
	slices.Sort(known)
	best, bestD := "", 3
	for _, k := range known {
		if dist := editDistance(strings.ToLower(key), k); dist < bestD {
			best, bestD = k, dist
		}
	}
	if best != "" {
		return fmt.Sprintf("unknown key %q (did you mean %q?)", key, best)
	}
	return fmt.Sprintf("unknown key %q (known here: %s)", key, strings.Join(known, ", "))
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

var (
	yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
	segmentRE  = regexp.MustCompile(`[^.\[\]]+|\[\d+\]`)
	datasetRE  = regexp.MustCompile(`^datasets\[(\d+)\]`)
)

// parserErrors are yaml.v3's parser (not scanner) errors: their line is 0-based, the line
// where the construct that could not be parsed begins (yaml.v3 adds 1 only to scanner
// errors' lines).
var parserErrors = []string{"did not find expected <document start>", "did not find expected node content",
	"did not find expected '-' indicator", "did not find expected key", "did not find expected ',' or ']'",
	"did not find expected ',' or '}'", "found duplicate %TAG directive", "found duplicate %YAML directive",
	"found incompatible YAML document", "found undefined tag handle"}

// syntaxProblem turns a YAML syntax error into a problem with its line.
func syntaxProblem(err error) Problem {
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ := strconv.Atoi(m[1])
		if slices.Contains(parserErrors, m[2]) {
			line++
		}
		return Problem{Line: line, Msg: "invalid YAML: " + m[2]}
	}
	return Problem{Msg: "invalid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
}

// lineOf returns the line of the field at path (e.g. datasets[0].metrics[3].type), or of the
// nearest enclosing field the file has; 0 when not even the first is there.
func lineOf(root *yaml.Node, path string) int {
	n, line := root, 0
	for _, seg := range segmentRE.FindAllString(path, -1) {
		n = resolve(n)
		if n == nil {
			break
		}
		var next *yaml.Node
		if strings.HasPrefix(seg, "[") {
			i, _ := strconv.Atoi(strings.Trim(seg, "[]"))
			if n.Kind == yaml.SequenceNode && i < len(n.Content) {
				next = n.Content[i]
				line = resolve(next).Line
			}
		} else if n.Kind == yaml.MappingNode {
			for j := 0; j+1 < len(n.Content); j += 2 {
				if n.Content[j].Value == seg {
					next = n.Content[j+1]
					line = n.Content[j].Line
				}
			}
		}
		if next == nil {
			break
		}
		n = next
	}
	return line
}

// finish gives every problem its file, its line (when the decoder did not) and a dataset's
// name beside its index, and sorts them by line.
func finish(file string, root *yaml.Node, c *Config, ps []Problem) Problems {
	for i := range ps {
		p := &ps[i]
		p.File = file
		if env := c.FromEnv(p.Field); env != "" {
			p.Line = 0
			p.Msg += " (from " + env + ")"
		} else if p.Line == 0 && root != nil {
			p.Line = lineOf(root, p.Field)
		}
		// "datasets[0] (Events).name: "Events" is not a valid name" would say it twice.
		if m := datasetRE.FindStringSubmatch(p.Field); m != nil && p.Field != m[0]+".name" {
			if j, _ := strconv.Atoi(m[1]); j < len(c.Datasets) && c.Datasets[j].Name != "" {
				p.Field = m[0] + " (" + c.Datasets[j].Name + ")" + p.Field[len(m[0]):]
			}
		}
	}
	// Problems without a line (from the environment) go last.
	key := func(line int) int {
		if line == 0 {
			return math.MaxInt
		}
		return line
	}
	slices.SortStableFunc(ps, func(a, b Problem) int {
		return cmp.Or(cmp.Compare(key(a.Line), key(b.Line)), cmp.Compare(a.column, b.column), cmp.Compare(a.Field, b.Field))
	})
	return ps
}
