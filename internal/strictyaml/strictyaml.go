// Package strictyaml decodes versioned YAML configuration files strictly: one document,
// no unknown or duplicate keys, no type coercions beyond the obvious, a known version, and
// every error naming the file, the line and the field path (`containers[3].gpus[1]`).
// fleet.yaml and host-agent.yaml both use it.
package strictyaml

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Error is a decoding or validation error located in a file.
type Error struct {
	File string
	Line int    // 0 when unknown
	Path string // field path, "" for the document
	Msg  string
	Err  error // a sentinel callers can test with errors.Is, or nil
}

// Unwrap returns the sentinel, if any.
func (e *Error) Unwrap() error { return e.Err }

func (e *Error) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Path != "" {
		return fmt.Sprintf("%s: %s: %s", loc, e.Path, e.Msg)
	}
	return loc + ": " + e.Msg
}

// ErrUnsupportedVersion is wrapped by the error for a missing or unknown version.
var ErrUnsupportedVersion = errors.New("unsupported version")

// Doc remembers where each field path of a decoded file sits, so that validation errors
// found after decoding can name the line too.
type Doc struct {
	File  string
	lines map[string]int
}

// Line returns the line of path, or of its nearest recorded parent, or 0.
func (d *Doc) Line(path string) int {
	for p := path; ; {
		if l, ok := d.lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i <= 0 {
			if l, ok := d.lines[""]; ok && p != "" {
				return l
			}
			return 0
		}
		p = p[:i]
	}
}

// Errorf returns an *Error for path with the path's line.
func (d *Doc) Errorf(path, format string, args ...any) *Error {
	return &Error{File: d.File, Line: d.Line(path), Path: path, Msg: fmt.Sprintf(format, args...)}
}

var durationType = reflect.TypeOf(time.Duration(0))

// Decode parses data, the contents of file, into v (a pointer to a struct whose fields carry
// `yaml:"name"` tags; a `yaml:"-"` field is never set). The document must have a top-level
// `version` equal to version.
func Decode(file string, data []byte, version int, v any) (*Doc, error) {
	doc := &Doc{File: file, lines: map[string]int{}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{File: file, Msg: fmt.Sprintf("empty file; it must start with version: %d", version)}
		}
		return nil, syntaxError(file, err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		return nil, &Error{File: file, Line: extra.Line, Msg: "a second YAML document ('---') follows; keep one document per file"}
	case !errors.Is(err, io.EOF):
		return nil, syntaxError(file, err)
	}
	n := &root
	if n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind != yaml.MappingNode {
		return nil, &Error{File: file, Line: n.Line, Msg: "the document must be a mapping of keys (version, ...)"}
	}
	if err := checkVersion(file, n, version); err != nil {
		return nil, err
	}
	d := decoder{doc: doc}
	if err := d.decode(n, reflect.ValueOf(v).Elem(), ""); err != nil {
		return nil, err
	}
	return doc, nil
}

func syntaxError(file string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if strings.HasPrefix(msg, "line ") {
		rest := msg[len("line "):]
		if i := strings.Index(rest, ":"); i > 0 {
			if l, err := strconv.Atoi(rest[:i]); err == nil {
				line, msg = l, strings.TrimSpace(rest[i+1:])
			}
		}
	}
	return &Error{File: file, Line: line, Msg: "invalid YAML: " + msg}
}

func checkVersion(file string, n *yaml.Node, version int) error {
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Value != "version" {
			continue
		}
		got, err := strconv.Atoi(val.Value)
		if val.Kind != yaml.ScalarNode || val.Tag != "!!int" || err != nil {
			return &Error{Err: ErrUnsupportedVersion, File: file, Line: val.Line, Path: "version",
				Msg: fmt.Sprintf("must be the integer %d, got %q", version, val.Value)}
		}
		if got != version {
			return &Error{Err: ErrUnsupportedVersion, File: file, Line: val.Line, Path: "version",
				Msg: fmt.Sprintf("unsupported version %d: this gpupass reads version %d (upgrade gpupass or convert the file)", got, version)}
		}
		return nil
	}
	return &Error{Err: ErrUnsupportedVersion, File: file, Line: n.Line, Path: "version",
		Msg: fmt.Sprintf("missing; add version: %d as the first line", version)}
}

type decoder struct {
	doc   *Doc
	depth int
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) error {
	d.depth++
	defer func() { d.depth-- }()
	if d.depth > 64 {
		return d.doc.Errorf(path, "nested too deeply")
	}
	if n.Kind == yaml.AliasNode {
		return &Error{File: d.doc.File, Line: n.Line, Path: path, Msg: "aliases (*name) are not supported; write the value out"}
	}
	if _, ok := d.doc.lines[path]; !ok {
		d.doc.lines[path] = n.Line
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		v.Set(reflect.Zero(v.Type()))
		return nil
	}
	if v.Type() == durationType {
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			return d.typeError(n, path, `a duration such as "10s"`)
		}
		dur, err := time.ParseDuration(n.Value)
		if err != nil {
			return &Error{File: d.doc.File, Line: n.Line, Path: path, Msg: fmt.Sprintf("%q is not a duration; write e.g. 500ms, 10s or 2m", n.Value)}
		}
		v.SetInt(int64(dur))
		return nil
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		return d.decode(n, v.Elem(), path)
	case reflect.Struct:
		return d.decodeStruct(n, v, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return d.typeError(n, path, "a list")
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			if err := d.decode(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	case reflect.Map:
		return d.decodeMap(n, v, path)
	case reflect.String:
		// Unquoted numbers are fine as strings (id: 901, gpus: [0, 1]); booleans and
		// floats are not, because YAML would have changed them (yes -> true, 1.10 -> 1.1).
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int") {
			return d.typeError(n, path, "a string (quote it)")
		}
		v.SetString(n.Value)
		return nil
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return d.typeError(n, path, "true or false")
		}
		var b bool
		if err := n.Decode(&b); err != nil {
			return d.typeError(n, path, "true or false")
		}
		v.SetBool(b)
		return nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return d.typeError(n, path, "an integer")
		}
		i, err := strconv.ParseInt(n.Value, 0, v.Type().Bits())
		if err != nil {
			return d.typeError(n, path, "an integer in range")
		}
		v.SetInt(i)
		return nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return d.typeError(n, path, "a non-negative integer")
		}
		u, err := strconv.ParseUint(n.Value, 0, v.Type().Bits())
		if err != nil {
			return d.typeError(n, path, "a non-negative integer in range")
		}
		v.SetUint(u)
		return nil
	}
	return fmt.Errorf("strictyaml: unsupported field type %s at %s", v.Type(), path)
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) error {
	if n.Kind != yaml.MappingNode {
		return d.typeError(n, path, "a mapping")
	}
	fields := map[string]int{}
	var names []string
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" || !t.Field(i).IsExported() {
			continue
		}
		fields[tag] = i
		names = append(names, tag)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return &Error{File: d.doc.File, Line: k.Line, Path: path, Msg: "keys must be plain names"}
		}
		if k.Value == "<<" {
			return &Error{File: d.doc.File, Line: k.Line, Path: path, Msg: "merge keys (<<) are not supported; write the keys out"}
		}
		fp := join(path, k.Value)
		idx, ok := fields[k.Value]
		if !ok {
			return &Error{File: d.doc.File, Line: k.Line, Path: fp,
				Msg: fmt.Sprintf("unknown field; known fields here: %s", strings.Join(names, ", "))}
		}
		if seen[k.Value] {
			return &Error{File: d.doc.File, Line: k.Line, Path: fp, Msg: "set twice"}
		}
		seen[k.Value] = true
		d.doc.lines[fp] = k.Line
		if err := d.decode(val, v.Field(idx), fp); err != nil {
			return err
		}
	}
	return nil
}

func (d *decoder) decodeMap(n *yaml.Node, v reflect.Value, path string) error {
	if n.Kind != yaml.MappingNode || v.Type().Key().Kind() != reflect.String {
		return d.typeError(n, path, "a mapping")
	}
	m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return &Error{File: d.doc.File, Line: k.Line, Path: path, Msg: "keys must be plain names"}
		}
		fp := join(path, k.Value)
		if m.MapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key())).IsValid() {
			return &Error{File: d.doc.File, Line: k.Line, Path: fp, Msg: "set twice"}
		}
		d.doc.lines[fp] = k.Line
		ev := reflect.New(v.Type().Elem()).Elem()
		if err := d.decode(val, ev, fp); err != nil {
			return err
		}
		m.SetMapIndex(reflect.ValueOf(k.Value).Convert(v.Type().Key()), ev)
	}
	v.Set(m)
	return nil
}

func (d *decoder) typeError(n *yaml.Node, path, want string) error {
	var got string
	switch n.Kind {
	case yaml.MappingNode:
		got = "a mapping"
	case yaml.SequenceNode:
		got = "a list"
	default:
		got = fmt.Sprintf("%s %q", strings.TrimPrefix(n.Tag, "!!"), n.Value)
	}
	return &Error{File: d.doc.File, Line: n.Line, Path: path, Msg: fmt.Sprintf("must be %s, got %s", want, got)}
}
