package policy

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/types"
)

// Rules are CEL, and CEL is what an exported admission policy carries and the
// API server runs. cel-go converts every map and list it reads into its own
// value types, which costs most of an evaluation, so the engine also compiles
// each rule's checked expression (parameters bound) into Go closures that read
// the decoded manifest as it is.
//
// The closures cover the part of CEL the packs are written in, and decline
// whenever they could differ from CEL: at compile time for a construct they do
// not know (the rule then always runs in CEL), at run time for a value whose
// CEL semantics they do not reproduce: an error (a missing field, an index
// out of range), a comparison of values of different types, an integer
// overflow. A declined evaluation is done again by the CEL program, so errors
// and corner cases stay exactly CEL's. TestNativeRulesMatchCEL and
// FuzzNativeRulesMatchCEL compare the two.

// nativeFn evaluates one expression node; ok false declines.
type nativeFn func(f *nativeFrame) (value any, ok bool)

// nativeFrame is the state of one evaluation: the object's activation (for
// `object`, `variables` and `namespaceObjects`) and the comprehension variables.
type nativeFrame struct {
	act   *activation
	slots []any
}

// interrupted checks, every interruptCheckFrequency iterations of a loop,
// whether the evaluation's context has ended, as the CEL program does: a
// comprehension over a large object (containers times volumes) is the one
// place an evaluation can take long. The program then declines, and the CEL
// program reports the interruption.
func (f *nativeFrame) interrupted(iteration int) bool {
	return iteration%interruptCheckFrequency == interruptCheckFrequency-1 && f.act.variables.ctx.Err() != nil
}

// nativeProgram is a compiled expression.
type nativeProgram struct {
	eval  nativeFn
	slots int // comprehension variables it needs
}

// lookupField reads field name of a map or of a pathEntry; isMap is false
// for any other value.
func lookupField(v any, name string) (value any, present, isMap bool) {
	switch m := v.(type) {
	case map[string]any:
		value, present = m[name]
		return value, present, true
	case *pathEntry:
		value, present = m.field(name)
		return value, present, true
	}
	return nil, false, false
}

// optionalValue is a CEL optional: optional.none() when present is false.
type optionalValue struct {
	value   any
	present bool
}

// nativeCompiler turns a checked CEL AST into closures.
type nativeCompiler struct {
	// variables maps the builtin variables computed natively to their index
	// in Policy.variables; any other `variables.X` declines.
	variables map[string]int
	scope     []nativeScope
	slots     int
}

// nativeScope is a comprehension variable in scope and its frame slot.
type nativeScope struct {
	name string
	slot int
}

// compileNative compiles a checked expression, or says which construct it lacks.
func compileNative(expr celast.Expr, variables map[string]int) (*nativeProgram, error) {
	c := &nativeCompiler{variables: variables}
	fn, err := c.compile(expr)
	if err != nil {
		return nil, err
	}
	return &nativeProgram{eval: fn, slots: c.slots}, nil
}

// run evaluates the program for the object of act.
func (p *nativeProgram) run(act *activation) (any, bool) {
	f := &act.frame
	f.act = act
	if cap(f.slots) < p.slots {
		f.slots = make([]any, p.slots)
	}
	f.slots = f.slots[:p.slots]
	v, ok := p.eval(f)
	clear(f.slots)
	return v, ok
}

func (c *nativeCompiler) lookup(name string) (nativeScope, bool) {
	for i := len(c.scope) - 1; i >= 0; i-- {
		if c.scope[i].name == name {
			return c.scope[i], true
		}
	}
	return nativeScope{}, false
}

func (c *nativeCompiler) compile(e celast.Expr) (nativeFn, error) {
	switch e.Kind() {
	case celast.LiteralKind:
		v, err := nativeLiteral(e.AsLiteral())
		if err != nil {
			return nil, err
		}
		return func(*nativeFrame) (any, bool) { return v, true }, nil
	case celast.IdentKind:
		return c.ident(e.AsIdent())
	case celast.SelectKind:
		return c.selectField(e.AsSelect())
	case celast.CallKind:
		return c.call(e.AsCall())
	case celast.ListKind:
		return c.list(e.AsList())
	case celast.MapKind:
		return c.mapLiteral(e.AsMap())
	case celast.ComprehensionKind:
		return c.comprehension(e.AsComprehension())
	}
	return nil, fmt.Errorf("expression kind %v", e.Kind())
}

func nativeLiteral(v any) (any, error) {
	switch x := v.(type) {
	case types.Bool:
		return bool(x), nil
	case types.Int:
		return int64(x), nil
	case types.String:
		return string(x), nil
	case types.Null:
		return nil, nil
	}
	return nil, fmt.Errorf("literal of type %T", v)
}

func (c *nativeCompiler) ident(name string) (nativeFn, error) {
	if s, ok := c.lookup(name); ok {
		slot := s.slot
		return func(f *nativeFrame) (any, bool) { return f.slots[slot], true }, nil
	}
	switch name {
	case "object":
		return func(f *nativeFrame) (any, bool) { return f.act.object, true }, nil
	case namespaceObjectsVariable:
		return func(f *nativeFrame) (any, bool) { return f.act.neighbours, true }, nil
	}
	return nil, fmt.Errorf("identifier %s", name)
}

func (c *nativeCompiler) selectField(sel celast.SelectExpr) (nativeFn, error) {
	field := sel.FieldName()
	if op := sel.Operand(); op.Kind() == celast.IdentKind && op.AsIdent() == "variables" {
		if _, shadowed := c.lookup("variables"); !shadowed {
			i, ok := c.variables[field]
			if !ok || sel.IsTestOnly() {
				return nil, fmt.Errorf("variables.%s", field)
			}
			return func(f *nativeFrame) (any, bool) { return f.act.nativeVariable(i) }, nil
		}
	}
	operand, err := c.compile(sel.Operand())
	if err != nil {
		return nil, err
	}
	if sel.IsTestOnly() {
		// has(x.f)
		return func(f *nativeFrame) (any, bool) {
			v, ok := operand(f)
			if !ok {
				return nil, false
			}
			_, present, isMap := lookupField(v, field)
			return present, isMap
		}, nil
	}
	return func(f *nativeFrame) (any, bool) {
		v, ok := operand(f)
		if !ok {
			return nil, false
		}
		v, present, isMap := lookupField(v, field)
		return v, present && isMap
	}, nil
}

func (c *nativeCompiler) list(l celast.ListExpr) (nativeFn, error) {
	if len(l.OptionalIndices()) > 0 {
		return nil, fmt.Errorf("optional list elements")
	}
	elems, err := c.compileAll(l.Elements())
	if err != nil {
		return nil, err
	}
	if constant, ok := constantList(l); ok {
		// Built and boxed once: no native operation modifies a list it is given.
		return func(*nativeFrame) (any, bool) { return constant, true }, nil
	}
	return func(f *nativeFrame) (any, bool) {
		out := make([]any, len(elems))
		for i, el := range elems {
			v, ok := el(f)
			if !ok {
				return nil, false
			}
			out[i] = v
		}
		return out, true
	}, nil
}

// constantList is the value of a list literal whose elements are all literals.
func constantList(l celast.ListExpr) (any, bool) {
	out := make([]any, len(l.Elements()))
	for i, e := range l.Elements() {
		if e.Kind() != celast.LiteralKind {
			return nil, false
		}
		v, err := nativeLiteral(e.AsLiteral())
		if err != nil {
			return nil, false
		}
		out[i] = v
	}
	return out, true
}

func (c *nativeCompiler) mapLiteral(m celast.MapExpr) (nativeFn, error) {
	keys := make([]string, len(m.Entries()))
	values := make([]nativeFn, len(m.Entries()))
	for i, entry := range m.Entries() {
		e := entry.AsMapEntry()
		lit, isString := literalString(e.Key())
		if !isString || e.IsOptional() || slices.Contains(keys[:i], lit) {
			return nil, fmt.Errorf("map literal with a key that is not a distinct string constant")
		}
		v, err := c.compile(e.Value())
		if err != nil {
			return nil, err
		}
		keys[i], values[i] = lit, v
	}
	return func(f *nativeFrame) (any, bool) {
		out := make(map[string]any, len(keys))
		for i, k := range keys {
			v, ok := values[i](f)
			if !ok {
				return nil, false
			}
			out[k] = v
		}
		return out, true
	}, nil
}

func literalString(e celast.Expr) (string, bool) {
	if e.Kind() != celast.LiteralKind {
		return "", false
	}
	s, ok := e.AsLiteral().(types.String)
	return string(s), ok
}

func (c *nativeCompiler) compileAll(exprs []celast.Expr) ([]nativeFn, error) {
	fns := make([]nativeFn, len(exprs))
	for i, e := range exprs {
		fn, err := c.compile(e)
		if err != nil {
			return nil, err
		}
		fns[i] = fn
	}
	return fns, nil
}

// comprehension evaluates as cel-go's folder does: the accumulator starts at
// accuInit; for each element the loop condition is evaluated first and a false
// one ends the loop; then the step gives the next accumulator; the result
// expression gives the value.
func (c *nativeCompiler) comprehension(comp celast.ComprehensionExpr) (nativeFn, error) {
	iterRange, err := c.compile(comp.IterRange())
	if err != nil {
		return nil, err
	}
	if shape, ok := listBuilding(comp); ok {
		return c.listComprehension(comp, shape, iterRange)
	}
	accuInit, err := c.compile(comp.AccuInit())
	if err != nil {
		return nil, err
	}
	depth := len(c.scope)
	defer func() { c.scope = c.scope[:depth] }()
	accu := c.declare(comp.AccuVar())
	vars := c.declareLoopVars(comp)
	cond, err := c.compile(comp.LoopCondition())
	if err != nil {
		return nil, err
	}
	step, err := c.compile(comp.LoopStep())
	if err != nil {
		return nil, err
	}
	result, err := c.compile(comp.Result())
	if err != nil {
		return nil, err
	}
	return func(f *nativeFrame) (any, bool) {
		rng, ok := iterRange(f)
		if !ok {
			return nil, false
		}
		r, ok := newLoopRange(rng)
		if !ok {
			return nil, false
		}
		if f.slots[accu], ok = accuInit(f); !ok {
			return nil, false
		}
		for i := range r.len() {
			if f.interrupted(i) {
				return nil, false
			}
			vars.set(f, &r, i)
			more, ok := evalBool(cond, f)
			if !ok {
				return nil, false
			}
			if !more {
				break
			}
			if f.slots[accu], ok = step(f); !ok {
				return nil, false
			}
		}
		return result(f)
	}, nil
}

// declare gives a comprehension variable a frame slot; the caller pops the scope.
func (c *nativeCompiler) declare(name string) int {
	c.scope = append(c.scope, nativeScope{name: name, slot: c.slots})
	c.slots++
	return c.slots - 1
}

// loopVars are the frame slots of a comprehension's iteration variables.
type loopVars struct {
	first, second int
	two           bool
}

func (c *nativeCompiler) declareLoopVars(comp celast.ComprehensionExpr) loopVars {
	v := loopVars{first: c.declare(comp.IterVar()), two: comp.HasIterVar2()}
	if v.two {
		v.second = c.declare(comp.IterVar2())
	}
	return v
}

// loopRange is what a comprehension iterates: a list in order, or a map in
// sorted key order. CEL leaves map order unspecified; sorting can only change
// the order of a list a rule returns, and findings are sorted.
type loopRange struct {
	list []any
	m    map[string]any
	keys []string
}

func newLoopRange(v any) (loopRange, bool) {
	switch r := v.(type) {
	case []any:
		return loopRange{list: r}, true
	case map[string]any:
		keys := make([]string, 0, len(r))
		for k := range r {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		return loopRange{m: r, keys: keys}, true
	}
	return loopRange{}, false
}

func (r *loopRange) len() int {
	if r.m != nil {
		return len(r.keys)
	}
	return len(r.list)
}

// set binds element i: a list's element (or index and element), a map's key
// (or key and value).
func (v loopVars) set(f *nativeFrame, r *loopRange, i int) {
	switch {
	case r.m != nil && v.two:
		f.slots[v.first], f.slots[v.second] = r.keys[i], r.m[r.keys[i]]
	case r.m != nil:
		f.slots[v.first] = r.keys[i]
	case v.two:
		f.slots[v.first], f.slots[v.second] = int64(i), r.list[i]
	default:
		f.slots[v.first] = r.list[i]
	}
}

// listShape is a comprehension that builds a list, as map, filter and
// transformList expand to: the accumulator starts as [], the loop condition
// is true, each step appends elems to it (when filter holds, if there is a
// filter: `filter ? accu + [elems] : accu`, or its negation), and the result
// is the accumulator.
type listShape struct {
	filter  celast.Expr // nil: every element
	negate  bool        // append when filter is false
	elems   []celast.Expr
	accuVar string
}

// listBuilding recognises a list-building comprehension whose accumulator is
// read nowhere else, so it can be built in place and boxed once.
func listBuilding(comp celast.ComprehensionExpr) (listShape, bool) {
	accu := comp.AccuVar()
	isAccu := func(e celast.Expr) bool { return e.Kind() == celast.IdentKind && e.AsIdent() == accu }
	appended := func(e celast.Expr) ([]celast.Expr, bool) {
		if e.Kind() != celast.CallKind || e.AsCall().FunctionName() != "_+_" || len(e.AsCall().Args()) != 2 {
			return nil, false
		}
		l, r := e.AsCall().Args()[0], e.AsCall().Args()[1]
		if !isAccu(l) || r.Kind() != celast.ListKind || len(r.AsList().OptionalIndices()) > 0 {
			return nil, false
		}
		return r.AsList().Elements(), true
	}
	init, cond := comp.AccuInit(), comp.LoopCondition()
	if init.Kind() != celast.ListKind || len(init.AsList().Elements()) != 0 || !isAccu(comp.Result()) {
		return listShape{}, false
	}
	if b, isBool := cond.AsLiteral().(types.Bool); cond.Kind() != celast.LiteralKind || !isBool || !bool(b) {
		return listShape{}, false
	}
	shape := listShape{accuVar: accu}
	step := comp.LoopStep()
	if elems, ok := appended(step); ok {
		shape.elems = elems
	} else if step.Kind() == celast.CallKind && step.AsCall().FunctionName() == "_?_:_" && len(step.AsCall().Args()) == 3 {
		args := step.AsCall().Args()
		if elems, ok := appended(args[1]); ok && isAccu(args[2]) {
			shape.filter, shape.elems = args[0], elems
		} else if elems, ok := appended(args[2]); ok && isAccu(args[1]) {
			shape.filter, shape.elems, shape.negate = args[0], elems, true
		} else {
			return listShape{}, false
		}
	} else {
		return listShape{}, false
	}
	// The accumulator must not be read by the filter or the elements.
	for _, e := range append([]celast.Expr{shape.filter}, shape.elems...) {
		if e != nil && readsVariable(e, accu) {
			return listShape{}, false
		}
	}
	return shape, true
}

// readsVariable reports whether e reads the variable name, leaving out the
// parts of nested comprehensions that bind a variable of the same name (map
// inside map: each has its own accumulator).
func readsVariable(e celast.Expr, name string) bool {
	switch e.Kind() {
	case celast.IdentKind:
		return e.AsIdent() == name
	case celast.SelectKind:
		return readsVariable(e.AsSelect().Operand(), name)
	case celast.CallKind:
		call := e.AsCall()
		if call.IsMemberFunction() && readsVariable(call.Target(), name) {
			return true
		}
		return slices.ContainsFunc(call.Args(), func(a celast.Expr) bool { return readsVariable(a, name) })
	case celast.ListKind:
		return slices.ContainsFunc(e.AsList().Elements(), func(a celast.Expr) bool { return readsVariable(a, name) })
	case celast.MapKind:
		return slices.ContainsFunc(e.AsMap().Entries(), func(en celast.EntryExpr) bool {
			return readsVariable(en.AsMapEntry().Key(), name) || readsVariable(en.AsMapEntry().Value(), name)
		})
	case celast.StructKind:
		return slices.ContainsFunc(e.AsStruct().Fields(), func(en celast.EntryExpr) bool {
			return readsVariable(en.AsStructField().Value(), name)
		})
	case celast.ComprehensionKind:
		comp := e.AsComprehension()
		if readsVariable(comp.IterRange(), name) || readsVariable(comp.AccuInit(), name) {
			return true
		}
		if comp.AccuVar() == name || comp.IterVar() == name || (comp.HasIterVar2() && comp.IterVar2() == name) {
			return false
		}
		return readsVariable(comp.LoopCondition(), name) || readsVariable(comp.LoopStep(), name) || readsVariable(comp.Result(), name)
	}
	return false
}

// emptyList is the boxed empty list, shared: appending to it always copies.
var emptyList any = []any{}

// listComprehension evaluates a listShape, iterating as comprehension does.
func (c *nativeCompiler) listComprehension(comp celast.ComprehensionExpr, shape listShape, iterRange nativeFn) (nativeFn, error) {
	depth := len(c.scope)
	defer func() { c.scope = c.scope[:depth] }()
	// The accumulator gets a slot nothing reads, so that an element naming a
	// variable of that name cannot see an outer one.
	c.declare(shape.accuVar)
	vars := c.declareLoopVars(comp)
	var filter nativeFn
	if shape.filter != nil {
		var err error
		if filter, err = c.compile(shape.filter); err != nil {
			return nil, err
		}
	}
	elems, err := c.compileAll(shape.elems)
	if err != nil {
		return nil, err
	}
	negate := shape.negate
	return func(f *nativeFrame) (any, bool) {
		rng, ok := iterRange(f)
		if !ok {
			return nil, false
		}
		r, ok := newLoopRange(rng)
		if !ok {
			return nil, false
		}
		var out []any
		if filter == nil && r.len() > 0 {
			out = make([]any, 0, r.len()*len(elems)) // a map: the size is known
		}
		for i := range r.len() {
			if f.interrupted(i) {
				return nil, false
			}
			vars.set(f, &r, i)
			if filter != nil {
				b, ok := evalBool(filter, f)
				if !ok {
					return nil, false
				}
				if b == negate {
					continue
				}
			}
			for _, el := range elems {
				v, ok := el(f)
				if !ok {
					return nil, false
				}
				out = append(out, v)
			}
		}
		if len(out) == 0 {
			return emptyList, true
		}
		return out, true
	}, nil
}

// nativeOperands are the functions the closures know, with their number of
// operands (a member call's target included); any other declines.
var nativeOperands = map[string]int{
	"_&&_": 2, "_||_": 2, "!_": 1, "@not_strictly_false": 1, "_?_:_": 3,
	"_==_": 2, "_!=_": 2, "_<_": 2, "_<=_": 2, "_>_": 2, "_>=_": 2,
	"_+_": 2, "_-_": 2, "@in": 2, "_?._": 2, "_[?_]": 2, "_[_]": 2,
	"orValue": 2, "hasValue": 1, "dyn": 1, "size": 1, "string": 1,
	"contains": 2, "startsWith": 2, "endsWith": 2, "split": 2, "substring": 2, "matches": 2,
}

func (c *nativeCompiler) call(call celast.CallExpr) (nativeFn, error) {
	name := call.FunctionName()
	// A member call is compiled as a function of its target and arguments.
	operands := call.Args()
	if call.IsMemberFunction() {
		operands = append([]celast.Expr{call.Target()}, operands...)
	}
	if n, known := nativeOperands[name]; !known || len(operands) != n {
		return nil, fmt.Errorf("function %s with %d operands", name, len(operands))
	}
	if fn, ok, err := c.fusedCall(name, operands); ok || err != nil {
		return fn, err
	}
	args, err := c.compileAll(operands)
	if err != nil {
		return nil, err
	}
	switch name {
	case "_&&_", "_||_":
		// CEL's && and || are commutative over errors; a false (&&) or true
		// (||) left side decides, whatever the right one would give.
		decisive := name == "_||_"
		left, right := args[0], args[1]
		return func(f *nativeFrame) (any, bool) {
			l, ok := evalBool(left, f)
			if !ok {
				return nil, false
			}
			if l == decisive {
				return decisive, true
			}
			r, ok := evalBool(right, f)
			return r, ok
		}, nil
	case "!_":
		arg := args[0]
		return func(f *nativeFrame) (any, bool) {
			b, ok := evalBool(arg, f)
			return !b, ok
		}, nil
	case "@not_strictly_false":
		arg := args[0]
		return func(f *nativeFrame) (any, bool) {
			b, ok := evalBool(arg, f)
			return b, ok
		}, nil
	case "_?_:_":
		cond, yes, no := args[0], args[1], args[2]
		return func(f *nativeFrame) (any, bool) {
			b, ok := evalBool(cond, f)
			if !ok {
				return nil, false
			}
			if b {
				return yes(f)
			}
			return no(f)
		}, nil
	case "_==_", "_!=_":
		negate := name == "_!=_"
		return binaryOp(args, func(a, b any) (any, bool) {
			eq, ok := nativeEqual(a, b)
			return eq != negate, ok
		}), nil
	case "_<_", "_<=_", "_>_", "_>=_":
		return binaryOp(args, func(a, b any) (any, bool) {
			cmp, ok := nativeCompare(a, b)
			if !ok {
				return nil, false
			}
			switch name {
			case "_<_":
				return cmp < 0, true
			case "_<=_":
				return cmp <= 0, true
			case "_>_":
				return cmp > 0, true
			}
			return cmp >= 0, true
		}), nil
	case "_+_":
		return binaryOp(args, nativeAdd), nil
	case "_-_":
		return binaryOp(args, func(a, b any) (any, bool) {
			x, okX := a.(int64)
			y, okY := b.(int64)
			if !okX || !okY || (y > 0 && x < math.MinInt64+y) || (y < 0 && x > math.MaxInt64+y) {
				return nil, false
			}
			return x - y, true
		}), nil
	case "@in":
		return c.in(operands[1], args), nil
	case "_?._", "_[?_]":
		return binaryOp(args, optionalIndex), nil
	case "_[_]":
		return binaryOp(args, index), nil
	case "orValue":
		opt, fallback := args[0], args[1]
		return func(f *nativeFrame) (any, bool) {
			v, ok := opt(f)
			if !ok {
				return nil, false
			}
			o, isOpt := v.(optionalValue)
			if !isOpt {
				return nil, false
			}
			if o.present {
				return o.value, true
			}
			return fallback(f)
		}, nil
	case "hasValue":
		return unaryOp(args[0], func(v any) (any, bool) {
			o, isOpt := v.(optionalValue)
			return o.present, isOpt
		}), nil
	case "dyn":
		return args[0], nil
	case "size":
		return unaryOp(args[0], func(v any) (any, bool) {
			switch x := v.(type) {
			case string:
				return int64(utf8.RuneCountInString(x)), true
			case []any:
				return int64(len(x)), true
			case map[string]any:
				return int64(len(x)), true
			}
			return nil, false
		}), nil
	case "string":
		return unaryOp(args[0], func(v any) (any, bool) {
			switch x := v.(type) {
			case string:
				return x, true
			case int64:
				return strconv.FormatInt(x, 10), true
			case bool:
				return strconv.FormatBool(x), true
			}
			return nil, false
		}), nil
	case "contains", "startsWith", "endsWith", "split":
		op := map[string]func(s, t string) any{
			"contains":   func(s, t string) any { return strings.Contains(s, t) },
			"startsWith": func(s, t string) any { return strings.HasPrefix(s, t) },
			"endsWith":   func(s, t string) any { return strings.HasSuffix(s, t) },
			"split": func(s, t string) any {
				parts := strings.Split(s, t)
				out := make([]any, len(parts))
				for i, p := range parts {
					out[i] = p
				}
				return out
			},
		}[name]
		return binaryOp(args, func(a, b any) (any, bool) {
			s, okS := a.(string)
			t, okT := b.(string)
			if !okS || !okT {
				return nil, false
			}
			return op(s, t), true
		}), nil
	case "substring":
		return binaryOp(args, func(a, b any) (any, bool) {
			s, okS := a.(string)
			start, okI := b.(int64)
			if !okS || !okI {
				return nil, false
			}
			runes := []rune(s)
			if start < 0 || start > int64(len(runes)) {
				return nil, false
			}
			return string(runes[start:]), true
		}), nil
	case "matches":
		return c.matches(operands[1], args)
	}
	return nil, fmt.Errorf("function %s", name)
}

// fusedCall compiles the calls that have a cheaper form than their parts:
// x.?a.?b.orValue(d) and x.?a.?b.hasValue() walk the chain without building
// optionals, size(s.split(t)) counts the separators, s.split(t)[i] cuts out
// the one part. ok is false when the call is none of them.
func (c *nativeCompiler) fusedCall(name string, operands []celast.Expr) (fn nativeFn, ok bool, err error) {
	switch name {
	case "orValue", "hasValue":
		walk, isChain := c.optionalChain(operands[0])
		if !isChain {
			return nil, false, nil
		}
		if name == "hasValue" {
			return func(f *nativeFrame) (any, bool) {
				_, present, ok := walk(f)
				return present, ok
			}, true, nil
		}
		fallback, err := c.compile(operands[1])
		return func(f *nativeFrame) (any, bool) {
			v, present, ok := walk(f)
			if !ok || present {
				return v, ok
			}
			return fallback(f)
		}, true, err
	case "size":
		str, sep, isSplit := c.splitCall(operands[0])
		if !isSplit {
			return nil, false, nil
		}
		return binaryOp([]nativeFn{str, sep}, func(a, b any) (any, bool) {
			s, okS := a.(string)
			sep, okSep := b.(string)
			if !okS || !okSep || sep == "" {
				return nil, false
			}
			return int64(strings.Count(s, sep) + 1), true
		}), true, nil
	case "_[_]":
		str, sep, isSplit := c.splitCall(operands[0])
		if !isSplit {
			return nil, false, nil
		}
		i, err := c.compile(operands[1])
		return ternaryOp(str, sep, i, func(s, sep string, i int64) (any, bool) {
			if sep == "" || i < 0 {
				return nil, false
			}
			for ; i > 0; i-- {
				_, rest, found := strings.Cut(s, sep)
				if !found {
					return nil, false
				}
				s = rest
			}
			part, _, _ := strings.Cut(s, sep)
			return part, true
		}), true, err
	}
	return nil, false, nil
}

// optionalChain compiles x.?a.?b[?'c'] (constant keys, x not optional) into
// one walk that gives the value at the end, or present false where a field
// is missing, without building optional values on the way. ok is false when e
// is not such a chain; the walk declines where optionalIndex would (a step on
// a value that is not a map).
func (c *nativeCompiler) optionalChain(e celast.Expr) (func(*nativeFrame) (value any, present, ok bool), bool) {
	var keys []string
	for e.Kind() == celast.CallKind {
		call := e.AsCall()
		if name := call.FunctionName(); (name != "_?._" && name != "_[?_]") || len(call.Args()) != 2 {
			break
		}
		key, isConst := literalString(call.Args()[1])
		if !isConst {
			return nil, false
		}
		keys = append(keys, key)
		e = call.Args()[0]
	}
	if len(keys) == 0 {
		return nil, false
	}
	slices.Reverse(keys)
	root, err := c.compile(e)
	if err != nil {
		return nil, false
	}
	return func(f *nativeFrame) (any, bool, bool) {
		v, ok := root(f)
		if !ok {
			return nil, false, false
		}
		for _, k := range keys {
			var present bool
			if v, present, ok = lookupField(v, k); !ok || !present {
				return nil, false, ok
			}
		}
		return v, true, true
	}, true
}

// splitCall compiles the string and separator of s.split(sep); ok is false
// when e is not such a call.
func (c *nativeCompiler) splitCall(e celast.Expr) (str, sep nativeFn, ok bool) {
	if e.Kind() != celast.CallKind {
		return nil, nil, false
	}
	call := e.AsCall()
	if call.FunctionName() != "split" || !call.IsMemberFunction() || len(call.Args()) != 1 {
		return nil, nil, false
	}
	str, err := c.compile(call.Target())
	if err != nil {
		return nil, nil, false
	}
	if sep, err = c.compile(call.Args()[0]); err != nil {
		return nil, nil, false
	}
	return str, sep, true
}

// ternaryOp applies op to a string, a string and an integer.
func ternaryOp(a, b, c nativeFn, op func(string, string, int64) (any, bool)) nativeFn {
	return func(f *nativeFrame) (any, bool) {
		va, ok := a(f)
		if !ok {
			return nil, false
		}
		vb, ok := b(f)
		if !ok {
			return nil, false
		}
		vc, ok := c(f)
		if !ok {
			return nil, false
		}
		s, okA := va.(string)
		t, okB := vb.(string)
		i, okC := vc.(int64)
		if !okA || !okB || !okC {
			return nil, false
		}
		return op(s, t, i)
	}
}

// matches precompiles a constant pattern, as the CEL program does (a bound
// parameter is a constant); a computed one is compiled per call.
func (c *nativeCompiler) matches(patternExpr celast.Expr, args []nativeFn) (nativeFn, error) {
	if pattern, isConst := literalString(patternExpr); isConst {
		re, err := regexp.Compile(pattern)
		if err != nil {
			return nil, fmt.Errorf("pattern %q: %w", pattern, err)
		}
		mayMatch := literalPrefilter(pattern)
		return unaryOp(args[0], func(v any) (any, bool) {
			s, ok := v.(string)
			if ok && mayMatch != nil && !mayMatch(s) {
				return false, true
			}
			return ok && re.MatchString(s), ok
		}), nil
	}
	return binaryOp(args, func(a, b any) (any, bool) {
		s, okS := a.(string)
		pattern, okP := b.(string)
		if !okS || !okP {
			return nil, false
		}
		re, err := regexp.Compile(pattern)
		if err != nil {
			return nil, false
		}
		return re.MatchString(s), true
	}), nil
}

// in is `elem in list` and `key in map`. A list of constants (a bound
// parameter, an inline list) is looked up in a set.
func (c *nativeCompiler) in(listExpr celast.Expr, args []nativeFn) nativeFn {
	if contains, ok := constantSet(listExpr); ok {
		return unaryOp(args[0], contains)
	}
	return binaryOp(args, func(elem, container any) (any, bool) {
		switch x := container.(type) {
		case []any:
			for _, item := range x {
				eq, ok := nativeEqual(elem, item)
				if !ok {
					return nil, false
				}
				if eq {
					return true, true
				}
			}
			return false, true
		case map[string]any:
			k, isString := elem.(string)
			if !isString {
				return nil, false
			}
			_, present := x[k]
			return present, true
		}
		return nil, false
	})
}

// constantSet returns membership in a list literal of string constants or of
// integer constants; an element of another type declines (CEL may still find
// it equal to one: 443.0 to 443). An empty list holds nothing, whatever the
// element.
func constantSet(e celast.Expr) (func(any) (any, bool), bool) {
	if e.Kind() != celast.ListKind || len(e.AsList().OptionalIndices()) > 0 {
		return nil, false
	}
	elems := e.AsList().Elements()
	if len(elems) == 0 {
		return func(any) (any, bool) { return false, true }, true
	}
	strs, ints := map[string]bool{}, map[int64]bool{}
	for _, el := range elems {
		if el.Kind() != celast.LiteralKind {
			return nil, false
		}
		switch v := el.AsLiteral().(type) {
		case types.String:
			strs[string(v)] = true
		case types.Int:
			ints[int64(v)] = true
		default:
			return nil, false
		}
	}
	switch {
	case len(ints) == 0:
		return func(v any) (any, bool) {
			s, ok := v.(string)
			return strs[s], ok
		}, true
	case len(strs) == 0:
		return func(v any) (any, bool) {
			n, ok := v.(int64)
			return ints[n], ok
		}, true
	}
	return nil, false
}

func evalBool(fn nativeFn, f *nativeFrame) (bool, bool) {
	v, ok := fn(f)
	if !ok {
		return false, false
	}
	b, isBool := v.(bool)
	return b, isBool
}

func unaryOp(arg nativeFn, op func(any) (any, bool)) nativeFn {
	return func(f *nativeFrame) (any, bool) {
		v, ok := arg(f)
		if !ok {
			return nil, false
		}
		return op(v)
	}
}

func binaryOp(args []nativeFn, op func(a, b any) (any, bool)) nativeFn {
	left, right := args[0], args[1]
	return func(f *nativeFrame) (any, bool) {
		a, ok := left(f)
		if !ok {
			return nil, false
		}
		b, ok := right(f)
		if !ok {
			return nil, false
		}
		return op(a, b)
	}
}

// nativeEqual is CEL equality for values of the same scalar type; anything
// else (numbers of different types, lists, maps, optionals) declines.
func nativeEqual(a, b any) (bool, bool) {
	switch x := a.(type) {
	case string:
		y, ok := b.(string)
		return x == y, ok
	case bool:
		y, ok := b.(bool)
		return x == y, ok
	case int64:
		y, ok := b.(int64)
		return x == y, ok
	case nil:
		return b == nil, b == nil
	}
	return false, false
}

// nativeCompare orders two integers or two strings (byte-wise, as CEL does).
func nativeCompare(a, b any) (int, bool) {
	switch x := a.(type) {
	case int64:
		y, ok := b.(int64)
		if !ok {
			return 0, false
		}
		switch {
		case x < y:
			return -1, true
		case x > y:
			return 1, true
		}
		return 0, true
	case string:
		y, ok := b.(string)
		return strings.Compare(x, y), ok
	}
	return 0, false
}

// nativeAdd is + on strings, lists and integers.
func nativeAdd(a, b any) (any, bool) {
	switch x := a.(type) {
	case string:
		y, ok := b.(string)
		return x + y, ok
	case []any:
		y, ok := b.([]any)
		if !ok {
			return nil, false
		}
		return slices.Concat(x, y), true
	case int64:
		y, ok := b.(int64)
		if !ok || (y > 0 && x > math.MaxInt64-y) || (y < 0 && x < math.MinInt64-y) {
			return nil, false
		}
		return x + y, true
	}
	return nil, false
}

// optionalIndex is x.?f and x[?k] on a map or an optional map.
func optionalIndex(v, key any) (any, bool) {
	if o, isOpt := v.(optionalValue); isOpt {
		if !o.present {
			return o, true
		}
		v = o.value
	}
	k, isString := key.(string)
	if !isString {
		return nil, false
	}
	val, present, isMap := lookupField(v, k)
	return optionalValue{value: val, present: present}, isMap
}

// index is x[k] on a map with a present string key or a list with an index in range.
func index(v, key any) (any, bool) {
	switch x := v.(type) {
	case map[string]any, *pathEntry:
		k, isString := key.(string)
		if !isString {
			return nil, false
		}
		val, present, _ := lookupField(x, k)
		return val, present
	case []any:
		i, isInt := key.(int64)
		if !isInt || i < 0 || i >= int64(len(x)) {
			return nil, false
		}
		return x[i], true
	}
	return nil, false
}

// nativeFieldPaths is fieldPaths for a natively computed result; ok is false
// for any value fieldPaths would reject (the CEL program then reports it).
func nativeFieldPaths(v any) ([]string, bool) {
	list, isList := v.([]any)
	if !isList {
		return nil, false
	}
	var paths []string
	for _, el := range list {
		switch e := el.(type) {
		case string:
			paths = append(paths, e)
		case []any:
			for _, inner := range e {
				s, ok := inner.(string)
				if !ok {
					return nil, false
				}
				paths = append(paths, s)
			}
		default:
			return nil, false
		}
	}
	return paths, true
}
