package policy

import "strconv"

// The builtin variables are defined in CEL (BuiltinVariables), and that
// definition is what an exported admission policy carries. Evaluating them in
// CEL costs more than every rule that reads them, so the engine computes them
// here in Go when the object has the shape the definitions expect, and hands
// CEL the finished values. When the shape is unexpected (a kind that is not a
// string, a pod spec that is not a mapping, containers that are not a list)
// the native path declines and the CEL definition runs, so that every error
// and corner case stays exactly the CEL one. TestNativeVariablesMatchCEL
// checks the equality on the corpus, the rule fixtures and malformed objects.

// pathEntry is an element of the containers, securityContexts and volumes
// variables: in CEL a map {path, type, value} (type only for containers), as
// the definitions build it; natively a struct, because building and reading
// maps is most of what those variables cost. Native rule programs read it
// through lookupField; CEL receives it as the map (celShape).
type pathEntry struct {
	path  string
	typ   any // the container field name as a string; nil when the entry has no type
	value any
}

func (e *pathEntry) field(name string) (any, bool) {
	switch name {
	case "path":
		return e.path, true
	case "value":
		return e.value, true
	case "type":
		return e.typ, e.typ != nil
	}
	return nil, false
}

// celShape turns a list of pathEntry into the list of maps CEL evaluates; other
// values are returned as they are.
func celShape(v any) any {
	list, isList := v.([]any)
	if !isList || len(list) == 0 {
		return v
	}
	if _, isEntry := list[0].(*pathEntry); !isEntry {
		return v
	}
	out := make([]any, len(list))
	for i, el := range list {
		e := el.(*pathEntry)
		m := map[string]any{"path": e.path, "value": e.value}
		if e.typ != nil {
			m["type"] = e.typ
		}
		out[i] = m
	}
	return out
}

// nativeVariable computes a builtin variable of obj natively; ok is false
// when the object's shape is one the native code does not handle.
type nativeVariable func(pv *podView) (value any, ok bool)

// nativeVariables are the builtin variables computed in Go, by name.
var nativeVariables = map[string]nativeVariable{
	"podSpecPath": func(pv *podView) (any, bool) {
		return pv.specPath, pv.kindOK
	},
	"podMetadataPath": func(pv *podView) (any, bool) {
		return pv.metaPath, pv.kindOK
	},
	"podSpec": func(pv *podView) (any, bool) {
		pv.resolve()
		return pv.spec, pv.specOK
	},
	"podMetadata": func(pv *podView) (any, bool) {
		pv.resolve()
		return pv.meta, pv.metaOK
	},
	"podLabels": func(pv *podView) (any, bool) {
		pv.resolve()
		meta, isMap := pv.meta.(map[string]any)
		if !pv.metaOK || !isMap {
			return nil, false
		}
		return orEmptyMap(meta, "labels"), true
	},
	"containers": func(pv *podView) (any, bool) {
		c, ok := pv.containerList()
		if !ok {
			return nil, false
		}
		return c, true
	},
	"securityContexts": func(pv *podView) (any, bool) {
		cs, ok := pv.containerList()
		if !ok {
			return nil, false
		}
		spec := pv.spec.(map[string]any)
		out := make([]any, 0, len(cs)+1)
		out = append(out, &pathEntry{path: pv.specPath + ".securityContext", value: orEmptyMap(spec, "securityContext")})
		for _, c := range cs {
			entry := c.(*pathEntry)
			value, isMap := entry.value.(map[string]any)
			if !isMap {
				// c.value.?securityContext on a non-map: leave the error to CEL.
				return nil, false
			}
			out = append(out, &pathEntry{path: entry.path + ".securityContext", value: orEmptyMap(value, "securityContext")})
		}
		return out, true
	},
	"volumes": func(pv *podView) (any, bool) {
		pv.resolve()
		spec, isMap := pv.spec.(map[string]any)
		if !pv.specOK || !isMap {
			return nil, false
		}
		vols, ok := listField(spec, "volumes")
		if !ok {
			return nil, false
		}
		out := make([]any, len(vols))
		for i, v := range vols {
			out[i] = &pathEntry{path: pv.specPath + ".volumes[" + strconv.Itoa(i) + "]", value: v}
		}
		return out, true
	},
	"namespace": func(pv *podView) (any, bool) {
		md, present := pv.obj["metadata"]
		if !present {
			return "", true
		}
		m, isMap := md.(map[string]any)
		if !isMap {
			return nil, false
		}
		if ns, present := m["namespace"]; present {
			return ns, true
		}
		return "", true
	},
}

// podView locates the pod spec and pod metadata of one object, as the
// podSpec/podSpecPath/podMetadata/podMetadataPath variables do.
type podView struct {
	obj                map[string]any
	kind               string
	kindOK             bool // kind is a string, so `object.kind == 'Pod'` is a plain comparison
	specPath, metaPath string

	resolved       bool
	spec, meta     any
	specOK, metaOK bool

	containersDone bool
	containers     []any
	containersOK   bool
}

// reset points the view at obj, dropping what was computed for the previous object.
func (pv *podView) reset(obj map[string]any) {
	*pv = podView{obj: obj}
	pv.kind, pv.kindOK = obj["kind"].(string)
	switch pv.kind {
	case "Pod":
		pv.specPath, pv.metaPath = "spec", "metadata"
	case "CronJob":
		pv.specPath, pv.metaPath = "spec.jobTemplate.spec.template.spec", "spec.jobTemplate.spec.template.metadata"
	case "PodTemplate":
		pv.specPath, pv.metaPath = "template.spec", "template.metadata"
	default:
		pv.specPath, pv.metaPath = "spec.template.spec", "spec.template.metadata"
	}
}

// podTemplateSteps returns the fields leading to the pod template (where spec and
// metadata hang) for a kind; nil means the object itself (a Pod).
func podTemplateSteps(kind string) []string {
	switch kind {
	case "Pod":
		return nil
	case "CronJob":
		return []string{"spec", "jobTemplate", "spec", "template"}
	case "PodTemplate":
		return []string{"template"}
	}
	return []string{"spec", "template"}
}

func (pv *podView) resolve() {
	if pv.resolved {
		return
	}
	pv.resolved = true
	if !pv.kindOK {
		return
	}
	steps := podTemplateSteps(pv.kind)
	pv.spec, pv.specOK = optionalPath(pv.obj, append(steps, "spec"))
	pv.meta, pv.metaOK = optionalPath(pv.obj, append(steps[:len(steps):len(steps)], "metadata"))
}

// optionalPath is `obj.?a.?b...orValue({})` for maps: the value at the path,
// an empty map when a field is missing, and ok false when a step meets a
// value that is not a map (CEL's result there is an error or depends on the
// value's type, so CEL decides).
func optionalPath(obj map[string]any, path []string) (any, bool) {
	var cur any = obj
	for _, f := range path {
		m, isMap := cur.(map[string]any)
		if !isMap {
			return nil, false
		}
		v, present := m[f]
		if !present {
			return map[string]any{}, true
		}
		cur = v
	}
	return cur, true
}

// containerList builds the `containers` variable.
func (pv *podView) containerList() ([]any, bool) {
	if pv.containersDone {
		return pv.containers, pv.containersOK
	}
	pv.containersDone = true
	pv.resolve()
	spec, isMap := pv.spec.(map[string]any)
	if !pv.specOK || !isMap {
		return nil, false
	}
	var lists [3][]any
	n := 0
	for i, field := range containerFields {
		l, ok := listField(spec, field)
		if !ok {
			return nil, false
		}
		lists[i] = l
		n += len(l)
	}
	out := make([]any, 0, n)
	for i, field := range containerFields {
		prefix := pv.specPath + "." + field + "["
		for j, c := range lists[i] {
			out = append(out, &pathEntry{path: prefix + strconv.Itoa(j) + "]", typ: containerFieldNames[i], value: c})
		}
	}
	pv.containers, pv.containersOK = out, true
	return out, true
}

var containerFields = [3]string{"containers", "initContainers", "ephemeralContainers"}

// containerFieldNames are containerFields as values, boxed once.
var containerFieldNames = [3]any{containerFields[0], containerFields[1], containerFields[2]}

// listField is `m.?field.orValue([])` where the value must be a list (the
// variables call transformList on it; anything else is left to CEL).
func listField(m map[string]any, field string) ([]any, bool) {
	v, present := m[field]
	if !present {
		return nil, true
	}
	l, isList := v.([]any)
	return l, isList
}

// orEmptyMap is `m.?field.orValue({})`.
func orEmptyMap(m map[string]any, field string) any {
	if v, present := m[field]; present {
		return v
	}
	return map[string]any{}
}
