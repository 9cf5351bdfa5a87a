// Command launcher starts one process of a noops-built image.
//
// It is installed at /cnb/lifecycle/launcher and /cnb/process/<type> are
// symlinks to it. It reads /layers/config/launch.json (or $CNB_LAUNCH_CONFIG),
// picks a process type, builds the environment from the image environment,
// the launch layers and their CNB env files, then replaces itself with the
// process (execve), so the process keeps PID 1 and receives signals directly.
//
// It depends on the standard library only and is built with
//
//	CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags='-s -w -buildid=' -o launcher .
//
// so that it runs in images without a libc or a shell and is byte-identical
// on every build.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
)

const (
	defaultConfigPath = "/layers/config/launch.json"
	defaultWorkingDir = "/workspace"
	defaultPort       = "8080"
	errPrefix         = "noops-launcher: "
)

// Exit codes.
const (
	exitConfig   = 1   // bad or missing configuration, unknown process type, no shell
	exitExecFail = 126 // found but could not be executed
	exitNotFound = 127 // command not found
)

// Variables rather than constants so that tests can point them elsewhere.
var (
	processDir = "/cnb/process"
	shellPath  = "/bin/sh"
)

// Process is one entry of launch.json "processes".
type Process struct {
	Type       string   `json:"type"`
	Command    []string `json:"command"`
	Args       []string `json:"args"`
	Direct     *bool    `json:"direct"` // omitted = true
	WorkingDir string   `json:"working-dir"`
	Default    bool     `json:"default"`
}

// IsDirect reports whether the process is exec'd without a shell.
func (p *Process) IsDirect() bool { return p.Direct == nil || *p.Direct }

// Config is the content of launch.json.
type Config struct {
	Processes []Process         `json:"processes"`
	Layers    []string          `json:"layers"`
	Env       map[string]string `json:"env"`
}

// launchError carries the exit code to use for a failure.
type launchError struct {
	code int
	msg  string
}

func (e *launchError) Error() string { return e.msg }

func fail(code int, format string, args ...interface{}) error {
	return &launchError{code: code, msg: fmt.Sprintf(format, args...)}
}

// Plan is everything needed for the final execve.
type Plan struct {
	Process *Process
	Path    string   // executable passed to execve
	Argv    []string // argv, argv[0] included
	Env     []string // KEY=VALUE, sorted
	Dir     string   // working directory
}

func main() {
	plan, err := Prepare(os.Args, os.Environ())
	if err == nil {
		err = execPlan(plan)
	}
	code := exitConfig
	var le *launchError
	if errors.As(err, &le) {
		code = le.code
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	fmt.Fprintln(os.Stderr, errPrefix+msg)
	os.Exit(code)
}

func execPlan(p *Plan) error {
	if err := os.Chdir(p.Dir); err != nil {
		return fail(exitConfig, "process '%s': cannot enter working directory %s: %v", p.Process.Type, p.Dir, unwrapPathError(err))
	}
	err := syscall.Exec(p.Path, p.Argv, p.Env)
	// Only reached on failure.
	return fail(exitExecFail, "process '%s': cannot execute %s: %v", p.Process.Type, p.Path, err)
}

// Prepare computes the process to run from the launcher's argv and environment.
func Prepare(argv []string, environ []string) (*Plan, error) {
	env := newEnv(environ)

	configPath := defaultConfigPath
	if v, ok := env.get("CNB_LAUNCH_CONFIG"); ok && v != "" {
		configPath = v
	}
	cfg, err := LoadConfig(configPath)
	if err != nil {
		return nil, err
	}

	argv0 := ""
	var extra []string
	if len(argv) > 0 {
		argv0 = argv[0]
		extra = argv[1:]
	}
	proc, err := SelectProcess(cfg, argv0, env)
	if err != nil {
		return nil, err
	}
	if len(proc.Command) == 0 || proc.Command[0] == "" {
		return nil, fail(exitConfig, "process '%s' in %s has an empty command", proc.Type, configPath)
	}

	if err := BuildEnv(env, cfg, proc.Type); err != nil {
		return nil, err
	}

	dir := proc.WorkingDir
	if dir == "" {
		dir = defaultWorkingDir
	}

	plan := &Plan{Process: proc, Dir: dir, Env: env.list()}
	lookup := env.get
	if proc.IsDirect() {
		// The launcher does the expansion the shell would have done, so that
		// "$PORT" works in images without a shell. Extra arguments given on
		// the command line are passed through untouched.
		var words []string
		for _, w := range proc.Command {
			words = append(words, Expand(w, lookup))
		}
		for _, w := range proc.Args {
			words = append(words, Expand(w, lookup))
		}
		words = append(words, extra...)
		pathVar, _ := env.get("PATH")
		path, err := LookPath(words[0], pathVar, dir)
		if err != nil {
			return nil, err
		}
		plan.Path = path
		plan.Argv = words
		return plan, nil
	}

	// Shell process: the shell does the expansion; extra arguments are passed
	// as positional parameters so that they are not re-parsed.
	if fi, err := os.Stat(shellPath); err != nil || fi.IsDir() {
		return nil, fail(exitConfig, "process '%s' needs a shell but this image has none; declare it direct", proc.Type)
	}
	script := strings.Join(append(append([]string{}, proc.Command...), proc.Args...), " ")
	if len(extra) > 0 {
		script += ` "$@"`
	}
	plan.Path = shellPath
	plan.Argv = append([]string{shellPath, "-c", script, proc.Type}, extra...)
	return plan, nil
}

// LoadConfig reads and checks launch.json.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fail(exitConfig, "launch config %s not found (is this image built by noops?)", path)
		}
		return nil, fail(exitConfig, "cannot read launch config %s: %v", path, unwrapPathError(err))
	}
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fail(exitConfig, "launch config %s is not valid JSON: %v", path, err)
	}
	if len(cfg.Processes) == 0 {
		return nil, fail(exitConfig, "launch config %s declares no processes", path)
	}
	seen := map[string]bool{}
	for _, p := range cfg.Processes {
		if !validType(p.Type) {
			return nil, fail(exitConfig, "launch config %s: invalid process type %q (letters, digits, '.', '_' and '-' only)", path, p.Type)
		}
		if seen[p.Type] {
			return nil, fail(exitConfig, "launch config %s: process type '%s' declared twice", path, p.Type)
		}
		seen[p.Type] = true
	}
	for _, l := range cfg.Layers {
		if !filepath.IsAbs(l) {
			return nil, fail(exitConfig, "launch config %s: layer path %q is not absolute", path, l)
		}
	}
	for k := range cfg.Env {
		if !validEnvName(k) {
			return nil, fail(exitConfig, "launch config %s: invalid env variable name %q", path, k)
		}
	}
	return &cfg, nil
}

func validType(t string) bool {
	if t == "" || t == "." || t == ".." {
		return false
	}
	for _, c := range t {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

func validEnvName(n string) bool {
	return n != "" && !strings.ContainsAny(n, "=\x00")
}

// SelectProcess picks the process: the symlink name under /cnb/process, then
// $CNB_PROCESS_TYPE, then the default process.
func SelectProcess(cfg *Config, argv0 string, env *Env) (*Process, error) {
	find := func(t, source string) (*Process, error) {
		for i := range cfg.Processes {
			if cfg.Processes[i].Type == t {
				return &cfg.Processes[i], nil
			}
		}
		return nil, fail(exitConfig, "unknown process type '%s' (from %s); known types: %s", t, source, knownTypes(cfg))
	}

	if t := typeFromArgv0(argv0, env); t != "" {
		return find(t, filepath.Join(processDir, t))
	}
	if t, ok := env.get("CNB_PROCESS_TYPE"); ok && t != "" {
		return find(t, "CNB_PROCESS_TYPE")
	}
	var defaults []*Process
	for i := range cfg.Processes {
		if cfg.Processes[i].Default {
			defaults = append(defaults, &cfg.Processes[i])
		}
	}
	switch len(defaults) {
	case 1:
		return defaults[0], nil
	case 0:
		return nil, fail(exitConfig, "no process type selected and no default process; set CNB_PROCESS_TYPE or use %s/<type>; known types: %s", processDir, knownTypes(cfg))
	default:
		var ts []string
		for _, p := range defaults {
			ts = append(ts, p.Type)
		}
		return nil, fail(exitConfig, "several processes are marked default (%s); set CNB_PROCESS_TYPE", strings.Join(ts, ", "))
	}
}

func knownTypes(cfg *Config) string {
	var ts []string
	for _, p := range cfg.Processes {
		ts = append(ts, p.Type)
	}
	sort.Strings(ts)
	return strings.Join(ts, ", ")
}

// typeFromArgv0 returns the process type when the launcher was started
// through /cnb/process/<type>, either by path or by bare name found in PATH.
func typeFromArgv0(argv0 string, env *Env) string {
	if argv0 == "" {
		return ""
	}
	if strings.Contains(argv0, "/") {
		if filepath.IsAbs(argv0) && filepath.Dir(filepath.Clean(argv0)) == filepath.Clean(processDir) {
			return filepath.Base(argv0)
		}
		return ""
	}
	// Started as a bare name (e.g. `docker run --entrypoint web`): find which
	// file of PATH the runtime executed.
	pathVar, _ := env.get("PATH")
	for _, d := range filepath.SplitList(pathVar) {
		if d == "" || !filepath.IsAbs(d) {
			continue
		}
		if fi, err := os.Stat(filepath.Join(d, argv0)); err == nil && !fi.IsDir() {
			if filepath.Clean(d) == filepath.Clean(processDir) {
				return argv0
			}
			return ""
		}
	}
	return ""
}

// BuildEnv applies, in order: the launch layers (bin, lib, env files), the
// launch.json env map, and the PORT default.
func BuildEnv(env *Env, cfg *Config, procType string) error {
	for _, layer := range cfg.Layers {
		if isDir(filepath.Join(layer, "bin")) {
			env.prependPath("PATH", filepath.Join(layer, "bin"))
		}
		if isDir(filepath.Join(layer, "lib")) {
			env.prependPath("LD_LIBRARY_PATH", filepath.Join(layer, "lib"))
		}
		for _, d := range []string{
			filepath.Join(layer, "env"),
			filepath.Join(layer, "env.launch"),
			filepath.Join(layer, "env.launch", procType),
		} {
			if err := ApplyEnvDir(env, d); err != nil {
				return err
			}
		}
	}
	keys := make([]string, 0, len(cfg.Env))
	for k := range cfg.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env.set(k, cfg.Env[k])
	}
	if _, ok := env.get("PORT"); !ok {
		env.set("PORT", defaultPort)
	}
	return nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// envOps collects the files of one env directory for one variable.
type envOps struct {
	plain, override, def, prepend, append, delim *string
}

// ApplyEnvDir applies the CNB env files of dir (Buildpack API >= 0.5 rules):
//
//	NAME, NAME.override  set
//	NAME.default         set if unset
//	NAME.prepend         value + delim + current
//	NAME.append          current + delim + value
//	NAME.delim           delimiter for prepend/append (none if absent)
//
// File contents are used verbatim. For each variable the operations are
// applied in the order override, default, prepend, append; variables are
// processed in name order. A missing dir is not an error.
func ApplyEnvDir(env *Env, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fail(exitConfig, "cannot read env directory %s: %v", dir, unwrapPathError(err))
	}
	ops := map[string]*envOps{}
	var names []string
	for _, e := range entries {
		full := filepath.Join(dir, e.Name())
		fi, err := os.Stat(full) // follow symlinks
		if err != nil {
			return fail(exitConfig, "cannot read env file %s: %v", full, unwrapPathError(err))
		}
		if fi.IsDir() {
			continue
		}
		name, suffix := splitEnvFile(e.Name())
		if !validEnvName(name) {
			return fail(exitConfig, "invalid env file name %s", full)
		}
		data, err := os.ReadFile(full)
		if err != nil {
			return fail(exitConfig, "cannot read env file %s: %v", full, unwrapPathError(err))
		}
		v := string(data)
		o := ops[name]
		if o == nil {
			o = &envOps{}
			ops[name] = o
			names = append(names, name)
		}
		switch suffix {
		case "":
			o.plain = &v
		case "override":
			o.override = &v
		case "default":
			o.def = &v
		case "prepend":
			o.prepend = &v
		case "append":
			o.append = &v
		case "delim":
			o.delim = &v
		}
	}
	sort.Strings(names)
	for _, name := range names {
		o := ops[name]
		delim := ""
		if o.delim != nil {
			delim = *o.delim
		}
		if o.override != nil {
			env.set(name, *o.override)
		} else if o.plain != nil {
			env.set(name, *o.plain)
		}
		if o.def != nil {
			if _, ok := env.get(name); !ok {
				env.set(name, *o.def)
			}
		}
		if o.prepend != nil {
			if cur, _ := env.get(name); cur != "" {
				env.set(name, *o.prepend+delim+cur)
			} else {
				env.set(name, *o.prepend)
			}
		}
		if o.append != nil {
			if cur, _ := env.get(name); cur != "" {
				env.set(name, cur+delim+*o.append)
			} else {
				env.set(name, *o.append)
			}
		}
	}
	return nil
}

// splitEnvFile splits "NAME.suffix" for the known suffixes; any other name is
// a plain variable name.
func splitEnvFile(file string) (name, suffix string) {
	if i := strings.LastIndexByte(file, '.'); i > 0 {
		switch s := file[i+1:]; s {
		case "override", "default", "prepend", "append", "delim":
			return file[:i], s
		}
	}
	return file, ""
}

// Env is an environment keeping the "unset" vs "empty" distinction.
type Env struct {
	m map[string]string
}

func newEnv(environ []string) *Env {
	e := &Env{m: map[string]string{}}
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		e.m[k] = v // later entries win, like the C library
	}
	return e
}

func (e *Env) get(k string) (string, bool) {
	v, ok := e.m[k]
	return v, ok
}

func (e *Env) set(k, v string) { e.m[k] = v }

func (e *Env) prependPath(k, dir string) {
	if cur, ok := e.m[k]; ok && cur != "" {
		e.m[k] = dir + string(os.PathListSeparator) + cur
	} else {
		e.m[k] = dir
	}
}

func (e *Env) list() []string {
	out := make([]string, 0, len(e.m))
	for k, v := range e.m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// Expand replaces $NAME and ${NAME} with their values (empty if unset).
// "$$" gives a literal "$"; a "$" not followed by a name, and "${" without a
// closing brace or with an invalid name inside, are kept literally.
func Expand(s string, lookup func(string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		c := s[i]
		if c != '$' || i+1 >= len(s) {
			b.WriteByte(c)
			i++
			continue
		}
		next := s[i+1]
		switch {
		case next == '$':
			b.WriteByte('$')
			i += 2
		case next == '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 || !isName(s[i+2:i+2+end]) {
				b.WriteByte('$')
				i++
				continue
			}
			v, _ := lookup(s[i+2 : i+2+end])
			b.WriteString(v)
			i += 2 + end + 1
		case isNameStart(next):
			j := i + 1
			for j < len(s) && isNameChar(s[j]) {
				j++
			}
			v, _ := lookup(s[i+1 : j])
			b.WriteString(v)
			i = j
		default:
			b.WriteByte('$')
			i++
		}
	}
	return b.String()
}

func isNameStart(c byte) bool { return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }
func isNameChar(c byte) bool  { return isNameStart(c) || (c >= '0' && c <= '9') }

func isName(s string) bool {
	if s == "" || !isNameStart(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isNameChar(s[i]) {
			return false
		}
	}
	return true
}

// LookPath finds an executable the way execvp would, but with the PATH of the
// final environment. Relative names with a slash are relative to dir.
func LookPath(file, pathVar, dir string) (string, error) {
	if strings.Contains(file, "/") {
		p := file
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := checkExecutable(p); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return "", fail(exitNotFound, "command %s not found", p)
			}
			return "", fail(exitExecFail, "command %s: %v", p, err)
		}
		return p, nil
	}
	var notExec string
	for _, d := range filepath.SplitList(pathVar) {
		if d == "" {
			d = "."
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(dir, d)
		}
		p := filepath.Join(d, file)
		err := checkExecutable(p)
		if err == nil {
			return p, nil
		}
		if notExec == "" && errors.Is(err, fs.ErrPermission) {
			notExec = p
		}
	}
	if notExec != "" {
		return "", fail(exitExecFail, "command %q found at %s but it is not executable (PATH=%s)", file, notExec, pathVar)
	}
	return "", fail(exitNotFound, "command %q not found in PATH=%s", file, pathVar)
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return unwrapPathError(err)
	}
	if fi.IsDir() || !fi.Mode().IsRegular() {
		return fs.ErrPermission
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return fs.ErrPermission
	}
	return nil
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
