package proxy

import (
	"bytes"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// secretKeys are the keys whose values are passwords wherever they appear
// (requirepass, master.password, master.sentinel.password,
// master.cluster.password, users[].password).
var secretKeys = map[string]bool{"requirepass": true, "password": true}

// EffectiveYAML is the configuration in force, defaults filled in and
// secrets read from their files, as YAML with every password replaced by
// an empty value and a comment saying it is set.
func (c Config) EffectiveYAML() ([]byte, error) {
	var root yaml.Node
	if err := root.Encode(c); err != nil {
		return nil, fmt.Errorf("encode the configuration: %w", err)
	}
	maskSecrets(&root)
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2) // as config.yaml is written
	if err := enc.Encode(&root); err != nil {
		return nil, fmt.Errorf("encode the configuration: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode the configuration: %w", err)
	}
	if !bytes.HasSuffix(out.Bytes(), []byte("\n")) {
		out.WriteByte('\n')
	}
	return out.Bytes(), nil
}

func maskSecrets(n *yaml.Node) {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if secretKeys[k.Value] && v.Kind == yaml.ScalarNode && v.Value != "" {
				v.Value, v.Tag, v.Style = "", "!!str", yaml.DoubleQuotedStyle
				v.LineComment = "set; hidden"
			}
		}
	}
	for _, child := range n.Content {
		maskSecrets(child)
	}
}

// checkKeys walks a parsed config file against the Config type and names
// the first unknown key by its path (master.sentinel.adrs, users[1].rol),
// where the YAML decoder would name a Go type.
func checkKeys(n *yaml.Node, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			if err := checkKeys(c, t, path); err != nil {
				return err
			}
		}
		return nil
	}
	if reflect.PointerTo(t).Implements(reflect.TypeFor[yaml.Unmarshaler]()) {
		return nil // a scalar with its own syntax (Duration, Size)
	}
	switch {
	case n.Kind == yaml.MappingNode && t.Kind() == reflect.Struct:
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			if key == "<<" {
				continue // a YAML merge: the decoder checks what it brings in
			}
			ft, ok := fields[key]
			if !ok {
				return fmt.Errorf("line %d: unknown key %s (known keys%s: %s)",
					n.Content[i].Line, joinPath(path, key), under(path), strings.Join(sortedKeys(fields), ", "))
			}
			if err := checkKeys(n.Content[i+1], ft, joinPath(path, key)); err != nil {
				return err
			}
		}
	case n.Kind == yaml.SequenceNode && t.Kind() == reflect.Slice:
		for i, c := range n.Content {
			if err := checkKeys(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil // type mismatches are the decoder's to report
}

// yamlFields maps each YAML key of a struct to its field's type.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if strings.Contains(opts, "inline") {
			for k, v := range yamlFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func under(path string) string {
	if path == "" {
		return " at the top level"
	}
	return " under " + path
}

func sortedKeys(m map[string]reflect.Type) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
