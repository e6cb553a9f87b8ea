package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/google/cel-go/cel"
	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/decls"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"k8s.io/apimachinery/pkg/util/version"
	apiservercel "k8s.io/apiserver/pkg/cel"
	"k8s.io/apiserver/pkg/cel/environment"
	"k8s.io/apiserver/pkg/cel/library"
)

// celCompatibility is the Kubernetes version whose CEL dialect rules are compiled
// against. A v1.34 API server compiles new ValidatingAdmissionPolicy expressions
// with the v1.33 feature set (n-1, so a rollback never meets an expression it
// cannot read); compiling with the same set is what makes export lossless.
var celCompatibility = version.MajorMinor(1, 33)

// variablesTypeName is the type ValidatingAdmissionPolicy gives its `variables`.
const variablesTypeName = "kubernetes.variables"

// Variable is a named CEL expression evaluated at most once per object and shared
// by every rule, with the semantics of ValidatingAdmissionPolicy spec.variables.
type Variable struct {
	Name        string
	Expression  string
	Description string
}

// BuiltinVariables are available to every rule. They are defined in CEL, so that
// an exported admission policy carries exactly the logic the engine applies; the
// engine computes the same values in Go where it can (see nativeVariables).
var BuiltinVariables = []Variable{
	{
		Name:        "podSpecPath",
		Description: "field path of the pod spec inside the object",
		Expression:  `object.kind == 'Pod' ? 'spec' : (object.kind == 'CronJob' ? 'spec.jobTemplate.spec.template.spec' : (object.kind == 'PodTemplate' ? 'template.spec' : 'spec.template.spec'))`,
	},
	{
		Name:        "podSpec",
		Description: "the pod spec of a Pod or of a workload's pod template",
		Expression:  `object.kind == 'Pod' ? object.?spec.orValue({}) : (object.kind == 'CronJob' ? object.?spec.?jobTemplate.?spec.?template.?spec.orValue({}) : (object.kind == 'PodTemplate' ? object.?template.?spec.orValue({}) : object.?spec.?template.?spec.orValue({})))`,
	},
	{
		Name:        "podMetadataPath",
		Description: "field path of the pod metadata (labels, annotations) inside the object",
		Expression:  `object.kind == 'Pod' ? 'metadata' : (object.kind == 'CronJob' ? 'spec.jobTemplate.spec.template.metadata' : (object.kind == 'PodTemplate' ? 'template.metadata' : 'spec.template.metadata'))`,
	},
	{
		Name:        "podMetadata",
		Description: "the metadata of a Pod or of a workload's pod template",
		Expression:  `object.kind == 'Pod' ? object.?metadata.orValue({}) : (object.kind == 'CronJob' ? object.?spec.?jobTemplate.?spec.?template.?metadata.orValue({}) : (object.kind == 'PodTemplate' ? object.?template.?metadata.orValue({}) : object.?spec.?template.?metadata.orValue({})))`,
	},
	{
		Name:        "podLabels",
		Description: "the labels of a Pod or of a workload's pod template ({} when none): what a NetworkPolicy's podSelector is matched against",
		Expression:  `variables.podMetadata.?labels.orValue({})`,
	},
	{
		Name:        "containers",
		Description: "every container, init container and ephemeral container as {path, type, value}",
		Expression: `variables.podSpec.?containers.orValue([]).transformList(i, c, {'path': dyn(variables.podSpecPath + '.containers[' + string(i) + ']'), 'type': dyn('containers'), 'value': c}) +
variables.podSpec.?initContainers.orValue([]).transformList(i, c, {'path': dyn(variables.podSpecPath + '.initContainers[' + string(i) + ']'), 'type': dyn('initContainers'), 'value': c}) +
variables.podSpec.?ephemeralContainers.orValue([]).transformList(i, c, {'path': dyn(variables.podSpecPath + '.ephemeralContainers[' + string(i) + ']'), 'type': dyn('ephemeralContainers'), 'value': c})`,
	},
	{
		Name:        "securityContexts",
		Description: "the pod security context and every container's, as {path, value}",
		Expression: `[{'path': dyn(variables.podSpecPath + '.securityContext'), 'value': variables.podSpec.?securityContext.orValue({})}] +
variables.containers.map(c, {'path': dyn(c.path + '.securityContext'), 'value': c.value.?securityContext.orValue({})})`,
	},
	{
		Name:        "volumes",
		Description: "the pod's volumes as {path, value}",
		Expression:  `variables.podSpec.?volumes.orValue([]).transformList(i, v, {'path': dyn(variables.podSpecPath + '.volumes[' + string(i) + ']'), 'value': v})`,
	},
	{
		Name:        "namespace",
		Description: "the object's namespace as written in the manifest ('' when unset)",
		Expression:  `object.?metadata.?namespace.orValue('')`,
	},
}

// compiledVariable is a builtin variable or a bound parameter.
type compiledVariable struct {
	name    string
	program cel.Program    // nil for parameters
	native  nativeVariable // the same computation in Go, for builtins that have one
	value   ref.Val        // the parameter's value
	refs    []string       // variables the expression reads, for export
}

// compiledRule is a rule ready to evaluate.
type compiledRule struct {
	*Rule
	program    cel.Program
	parameters []string // parameters the expression reads, for docs and export
	variables  []string // every variable the expression reads, for export
	reads      []ruleRead
	// native evaluates the expression in Go (nil when nativeErr says why not);
	// the program decides whenever native declines.
	native    *nativeProgram
	nativeErr error
	// neighbourKinds are the Kind.group keys of Rule.NamespaceObjects; nil for
	// a rule that reads the checked object alone.
	neighbourKinds []string
}

// boundParameter is a parameter with the value in force for a profile.
type boundParameter struct {
	Parameter
	value any
}

// newEnv builds the CEL environment of a profile: the Kubernetes base environment
// at celCompatibility plus `object` and `variables`, as ValidatingAdmissionPolicy
// declares them. Every expression is type-checked here, so a rule the engine
// accepts is one the API server accepts.
func newEnv() (*cel.Env, *apiservercel.DeclType, error) {
	varsType := apiservercel.NewObjectType(variablesTypeName, map[string]*apiservercel.DeclField{})
	envSet, err := environment.MustBaseEnvSet(celCompatibility, true).Extend(environment.VersionedOptions{
		IntroducedVersion: version.MajorMinor(1, 0),
		EnvOptions: []cel.EnvOption{
			cel.Variable("object", cel.DynType),
			cel.Variable("variables", varsType.CelType()),
		},
		DeclTypes: []*apiservercel.DeclType{varsType},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("building the CEL environment: %w", err)
	}
	return envSet.NewExpressionsEnv(), varsType, nil
}

// namespaceObjectsVariable is what cross-object rules read their neighbours as.
// It is a top-level name, not one of `variables`, because it has no
// counterpart in a ValidatingAdmissionPolicy: only environments compiling
// rules that declare Rule.NamespaceObjects have it, so any other rule reading
// it fails to compile instead of failing in the API server after export.
const namespaceObjectsVariable = "namespaceObjects"

// withNamespaceObjects extends a checking environment for cross-object rules.
func withNamespaceObjects(env *cel.Env) (*cel.Env, error) {
	ext, err := env.Extend(cel.Variable(namespaceObjectsVariable, cel.ListType(cel.DynType)))
	if err != nil {
		return nil, fmt.Errorf("building the CEL environment of cross-object rules: %w", err)
	}
	return ext, nil
}

// newEvalEnv derives the environment programs are planned in from the checking
// environment: the same functions, types and variables, without the base
// environment's program options. Those make every evaluation step report to a
// cost tracker, which the API server needs to bound admission latency and which
// costs an offline evaluator a quarter of its time; here a context deadline,
// checked every interruptCheckFrequency iterations, stops a runaway evaluation.
func newEvalEnv(env *cel.Env) (*cel.Env, error) {
	fns := make([]*decls.FunctionDecl, 0, len(env.Functions()))
	for _, fn := range env.Functions() {
		fns = append(fns, fn)
	}
	evalEnv, err := cel.NewCustomEnv(
		// Declared again for its program option: orValue() and or() short-circuit.
		// It registers the optional type, so it must precede the custom provider.
		cel.OptionalTypes(),
		cel.CustomTypeAdapter(env.CELTypeAdapter()),
		cel.CustomTypeProvider(env.CELTypeProvider()),
		cel.VariableDecls(env.Variables()...),
		cel.FunctionDecls(fns...),
	)
	if err != nil {
		return nil, fmt.Errorf("building the CEL evaluation environment: %w", err)
	}
	return evalEnv, nil
}

// interruptCheckFrequency is how many comprehension iterations pass between
// checks of the evaluation context.
const interruptCheckFrequency = 100

// evalProgramOptions are the base environment's program options minus cost
// tracking: constant folding, regexes compiled once when the pattern is a
// constant (a parameter becomes one when it is bound), and interruption.
var evalProgramOptions = []cel.ProgramOption{
	cel.EvalOptions(cel.OptOptimize),
	cel.OptimizeRegex(library.FindRegexOptimization, library.FindAllRegexOptimization),
	cel.InterruptCheckFrequency(interruptCheckFrequency),
}

// compiler checks expressions in the API server's dialect and plans them for
// evaluation with the profile's parameters bound.
type compiler struct {
	env     *cel.Env
	evalEnv *cel.Env
	bind    *cel.StaticOptimizer
}

// withNamespaceObjects returns a compiler for cross-object rules: the same
// environment and parameter binding plus `namespaceObjects`.
func (c *compiler) withNamespaceObjects() (*compiler, error) {
	env, err := withNamespaceObjects(c.env)
	if err != nil {
		return nil, err
	}
	evalEnv, err := newEvalEnv(env)
	if err != nil {
		return nil, err
	}
	return &compiler{env: env, evalEnv: evalEnv, bind: c.bind}, nil
}

// checkExpression type-checks expr and returns its AST and the variables it reads.
func checkExpression(env *cel.Env, expr string) (*cel.Ast, []string, error) {
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return nil, nil, iss.Err()
	}
	return ast, referencedVariables(ast), nil
}

// compiledExpression is an expression checked and planned for evaluation.
type compiledExpression struct {
	program cel.Program
	checked *cel.Ast // before parameters were bound
	bound   *cel.Ast // with parameters as constants: what program runs
	refs    []string // the variables it reads
}

// compile checks expr and plans it with the profile's parameters bound.
func (c *compiler) compile(expr string) (*compiledExpression, error) {
	ast, refs, err := checkExpression(c.env, expr)
	if err != nil {
		return nil, err
	}
	bound, iss := c.bind.Optimize(c.env, ast)
	if iss.Err() != nil {
		return nil, fmt.Errorf("binding parameters: %w", iss.Err())
	}
	prg, err := c.evalEnv.Program(bound, evalProgramOptions...)
	if err != nil {
		return nil, err
	}
	return &compiledExpression{program: prg, checked: ast, bound: bound, refs: refs}, nil
}

// parameterBinder replaces every `variables.<parameter>` with the parameter's
// value as a literal. Parameters are fixed once a profile is compiled, so this
// is the same program; as constants they let the planner compile regexes once,
// turn `x in list` into a set lookup, and skip a variable lookup per use.
type parameterBinder struct {
	values map[string]any
}

func (b *parameterBinder) Optimize(ctx *cel.OptimizerContext, a *celast.AST) *celast.AST {
	uses := celast.MatchDescendants(celast.NavigateAST(a), func(e celast.NavigableExpr) bool {
		if e.Kind() != celast.SelectKind {
			return false
		}
		sel := e.AsSelect()
		_, isParam := b.values[sel.FieldName()]
		return isParam && !sel.IsTestOnly() && sel.Operand().Kind() == celast.IdentKind && sel.Operand().AsIdent() == "variables"
	})
	for _, use := range uses {
		ctx.UpdateExpr(use, b.literal(ctx, b.values[use.AsSelect().FieldName()]))
	}
	return a
}

func (b *parameterBinder) literal(ctx *cel.OptimizerContext, v any) celast.Expr {
	switch x := v.(type) {
	case []string:
		elems := make([]celast.Expr, len(x))
		for i, s := range x {
			elems[i] = ctx.NewLiteral(types.String(s))
		}
		return ctx.NewList(elems, nil)
	case []int64:
		elems := make([]celast.Expr, len(x))
		for i, n := range x {
			elems[i] = ctx.NewLiteral(types.Int(n))
		}
		return ctx.NewList(elems, nil)
	case string:
		return ctx.NewLiteral(types.String(x))
	case int64:
		return ctx.NewLiteral(types.Int(x))
	case bool:
		return ctx.NewLiteral(types.Bool(x))
	}
	// decode only produces the types above.
	panic(fmt.Sprintf("parameter value of type %T", v))
}

func paramDeclType(t ParameterType) *apiservercel.DeclType {
	switch t {
	case ParamStringList:
		return apiservercel.NewListType(apiservercel.StringType, -1)
	case ParamIntegerList:
		return apiservercel.NewListType(apiservercel.IntType, -1)
	case ParamInteger:
		return apiservercel.IntType
	case ParamBoolean:
		return apiservercel.BoolType
	default:
		return apiservercel.StringType
	}
}

// referencedVariables lists the `variables.X` selections in a checked expression.
func referencedVariables(ast *cel.Ast) []string {
	var names []string
	celast.PreOrderVisit(celast.NavigateAST(ast.NativeRep()), celast.NewExprVisitor(func(e celast.Expr) {
		if e.Kind() != celast.SelectKind {
			return
		}
		sel := e.AsSelect()
		if op := sel.Operand(); op.Kind() == celast.IdentKind && op.AsIdent() == "variables" && !slices.Contains(names, sel.FieldName()) {
			names = append(names, sel.FieldName())
		}
	}))
	sort.Strings(names)
	return names
}

// checkOutputType accepts the list shapes rule expressions may return.
func checkOutputType(t *cel.Type) error {
	if t.IsExactType(cel.DynType) {
		return nil
	}
	if t.Kind() == types.ListKind {
		elem := t.Parameters()[0]
		if elem.IsExactType(cel.StringType) || elem.IsExactType(cel.DynType) {
			return nil
		}
		if elem.Kind() == types.ListKind {
			inner := elem.Parameters()[0]
			if inner.IsExactType(cel.StringType) || inner.IsExactType(cel.DynType) {
				return nil
			}
		}
	}
	return fmt.Errorf("expression returns %s; it must return a list of field paths (list(string), or list(list(string)))", t)
}

// compileProfile binds parameter values and compiles variables and rules.
func compileProfile(res *resolved, overrides map[string]json.RawMessage) (*Policy, error) {
	env, varsType, err := newEnv()
	if err != nil {
		return nil, err
	}
	evalEnv, err := newEvalEnv(env)
	if err != nil {
		return nil, err
	}
	p := &Policy{env: env, adapter: evalEnv.CELTypeAdapter(), byKind: map[string][]*compiledRule{}}
	binder := &parameterBinder{values: map[string]any{}}
	c := &compiler{env: env, evalEnv: evalEnv, bind: cel.NewStaticOptimizer(binder)}

	// violationsVariable is reserved for the exported admission policy.
	builtin := map[string]bool{violationsVariable: true}
	for _, v := range BuiltinVariables {
		builtin[v.Name] = true
		builtin[exportedVariableName(v.Name)] = true
	}
	declared := map[string]bool{}
	for _, prm := range res.params {
		if builtin[prm.Name] {
			return nil, fmt.Errorf("parameter %q has the name of a builtin variable", prm.Name)
		}
		declared[prm.Name] = true
		raw := prm.Default
		if o, ok := overrides[prm.Name]; ok {
			raw = o
		}
		val, err := prm.decode(raw)
		if err != nil {
			return nil, fmt.Errorf("parameter %s: %w", prm.Name, err)
		}
		p.params = append(p.params, &boundParameter{Parameter: *prm, value: val})
		p.variables = append(p.variables, &compiledVariable{name: prm.Name, value: types.DefaultTypeAdapter.NativeToValue(val)})
		binder.values[prm.Name] = val
		varsType.Fields[prm.Name] = apiservercel.NewDeclField(prm.Name, paramDeclType(prm.Type), true, nil, nil)
	}
	var unknown []string
	for name := range overrides {
		if !declared[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return nil, fmt.Errorf("parameters %s are not declared by any pack of the profile", strings.Join(unknown, ", "))
	}

	// Variables are declared one at a time, in order, so an expression can only
	// read variables defined before it, as in ValidatingAdmissionPolicy.
	for _, v := range BuiltinVariables {
		ce, err := c.compile(v.Expression)
		if err != nil {
			return nil, fmt.Errorf("compiling builtin variable %s: %w", v.Name, err)
		}
		p.variables = append(p.variables, &compiledVariable{name: v.Name, program: ce.program, native: nativeVariables[v.Name], refs: ce.refs})
		varsType.Fields[v.Name] = apiservercel.NewDeclField(v.Name, apiservercel.DynType, true, nil, nil)
	}
	p.variableIndex = make(map[string]int, len(p.variables))
	nativeIndex := map[string]int{} // the variables native rule programs can read
	for i, v := range p.variables {
		p.variableIndex[v.name] = i
		if v.native != nil {
			nativeIndex[v.name] = i
		}
	}
	p.variablesType = cel.ObjectType(varsType.CelType().TypeName(), traits.IndexerType|traits.FieldTesterType|traits.IterableType)

	var errs []error
	var crossCompiler *compiler // built when the first cross-object rule needs it
	for _, r := range res.rules {
		if !r.HasTarget(TargetManifest) {
			continue
		}
		rc := c
		if r.CrossObject() {
			if crossCompiler == nil {
				if crossCompiler, err = c.withNamespaceObjects(); err != nil {
					return nil, err
				}
			}
			rc = crossCompiler
		}
		ce, err := rc.compile(r.Expression)
		if err == nil {
			err = checkOutputType(ce.checked.OutputType())
		}
		if err != nil && !r.CrossObject() && strings.Contains(err.Error(), "'"+namespaceObjectsVariable+"'") {
			err = fmt.Errorf("%w (a rule reading %s must list their kinds in namespaceObjects)", err, namespaceObjectsVariable)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("compiling rule %s (pack %q): %w", r.ID, r.pack, err))
			continue
		}
		cr := &compiledRule{Rule: r, program: ce.program, variables: ce.refs, reads: readSet(ce.checked), neighbourKinds: r.NamespaceObjects}
		// A rule the Go closures cannot express runs in CEL alone (see native.go).
		cr.native, cr.nativeErr = compileNative(ce.bound.NativeRep().Expr(), nativeIndex)
		for _, name := range ce.refs {
			if declared[name] {
				cr.parameters = append(cr.parameters, name)
			}
		}
		p.rules = append(p.rules, cr)
		for _, k := range r.NamespaceObjects {
			if p.neighbourKinds == nil {
				p.neighbourKinds = map[string]bool{}
			}
			p.neighbourKinds[k] = true
		}
		for _, k := range r.MatchedKinds() {
			p.byKind[k] = append(p.byKind[k], cr)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	p.plans = make(map[string]*kindPlan, len(p.byKind))
	for k, rules := range p.byKind {
		p.plans[k] = newKindPlan(rules, declared)
	}
	return p, nil
}
