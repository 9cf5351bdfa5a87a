package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// When the test binary is re-executed with NOOPS_LAUNCHER_AS_MAIN=1 it behaves
// as the launcher, so the integration tests exercise the real main() and
// syscall.Exec without building a separate binary.
func TestMain(m *testing.M) {
	if os.Getenv("NOOPS_LAUNCHER_AS_MAIN") == "1" {
		if d := os.Getenv("NOOPS_TEST_PROCESS_DIR"); d != "" {
			processDir = d
		}
		main()
		return
	}
	os.Exit(m.Run())
}

// ---- helpers ---------------------------------------------------------------

func boolp(b bool) *bool { return &b }

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func writeConfig(t *testing.T, dir string, cfg interface{}) string {
	t.Helper()
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "launch.json")
	writeFile(t, p, string(data), 0o644)
	return p
}

func envOf(kv ...string) *Env { return newEnv(kv) }

func mustGet(t *testing.T, e *Env, k string) string {
	t.Helper()
	v, ok := e.get(k)
	if !ok {
		t.Fatalf("%s unset", k)
	}
	return v
}

func exitCode(err error) int {
	var le *launchError
	if errors.As(err, &le) {
		return le.code
	}
	return -1
}

func twoProcs() *Config {
	return &Config{Processes: []Process{
		{Type: "web", Command: []string{"web-cmd"}, Default: true},
		{Type: "worker", Command: []string{"worker-cmd"}},
	}}
}

// ---- process selection -----------------------------------------------------

func TestSelectProcess(t *testing.T) {
	cfg := twoProcs()
	cases := []struct {
		name  string
		argv0 string
		env   []string
		want  string
	}{
		{"default", "/cnb/lifecycle/launcher", nil, "web"},
		{"symlink", "/cnb/process/worker", nil, "worker"},
		{"symlink wins over env", "/cnb/process/worker", []string{"CNB_PROCESS_TYPE=web"}, "worker"},
		{"env", "/cnb/lifecycle/launcher", []string{"CNB_PROCESS_TYPE=worker"}, "worker"},
		{"empty env ignored", "/cnb/lifecycle/launcher", []string{"CNB_PROCESS_TYPE="}, "web"},
		{"not under process dir", "/usr/local/bin/worker", nil, "web"},
		{"nested under process dir", "/cnb/process/x/worker", nil, "web"},
		{"relative path", "cnb/process/worker", nil, "web"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := SelectProcess(cfg, c.argv0, envOf(c.env...))
			if err != nil {
				t.Fatal(err)
			}
			if p.Type != c.want {
				t.Fatalf("got %s, want %s", p.Type, c.want)
			}
		})
	}
}

func TestSelectProcessBareNameInPath(t *testing.T) {
	dir := t.TempDir()
	old := processDir
	processDir = filepath.Join(dir, "cnb", "process")
	defer func() { processDir = old }()
	writeFile(t, filepath.Join(processDir, "worker"), "", 0o755)
	other := filepath.Join(dir, "bin")
	writeFile(t, filepath.Join(other, "tool"), "", 0o755)

	env := envOf("PATH=" + processDir + ":" + other)
	p, err := SelectProcess(twoProcs(), "worker", env)
	if err != nil || p.Type != "worker" {
		t.Fatalf("got %v, %v", p, err)
	}
	p, err = SelectProcess(twoProcs(), "tool", env)
	if err != nil || p.Type != "web" {
		t.Fatalf("bare name outside process dir: got %v, %v", p, err)
	}
}

func TestSelectProcessUnknownType(t *testing.T) {
	for _, tc := range []struct{ argv0, env string }{
		{"/cnb/process/cron", ""},
		{"/cnb/lifecycle/launcher", "CNB_PROCESS_TYPE=cron"},
	} {
		_, err := SelectProcess(twoProcs(), tc.argv0, envOf(tc.env))
		if err == nil {
			t.Fatal("expected an error")
		}
		if exitCode(err) != 1 {
			t.Fatalf("exit code %d", exitCode(err))
		}
		msg := err.Error()
		if !strings.Contains(msg, "unknown process type 'cron'") || !strings.Contains(msg, "known types: web, worker") {
			t.Fatalf("message %q", msg)
		}
	}
}

func TestSelectProcessNoDefault(t *testing.T) {
	cfg := twoProcs()
	cfg.Processes[0].Default = false
	_, err := SelectProcess(cfg, "/cnb/lifecycle/launcher", envOf())
	if err == nil || !strings.Contains(err.Error(), "no default process") || !strings.Contains(err.Error(), "web, worker") {
		t.Fatalf("got %v", err)
	}
	cfg.Processes[0].Default = true
	cfg.Processes[1].Default = true
	_, err = SelectProcess(cfg, "/cnb/lifecycle/launcher", envOf())
	if err == nil || !strings.Contains(err.Error(), "several processes") {
		t.Fatalf("got %v", err)
	}
	// An explicit choice still works with an ambiguous default.
	p, err := SelectProcess(cfg, "/cnb/process/worker", envOf())
	if err != nil || p.Type != "worker" {
		t.Fatalf("got %v, %v", p, err)
	}
}

// ---- config ------------------------------------------------------------------

func TestLoadConfigErrors(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"bad json":       `{"processes": [`,
		"no processes":   `{"processes": []}`,
		"duplicate type": `{"processes":[{"type":"web","command":["a"]},{"type":"web","command":["b"]}]}`,
		"invalid type":   `{"processes":[{"type":"we b","command":["a"]}]}`,
		"dotdot type":    `{"processes":[{"type":"..","command":["a"]}]}`,
		"relative layer": `{"processes":[{"type":"web","command":["a"]}],"layers":["layers/x"]}`,
		"bad env name":   `{"processes":[{"type":"web","command":["a"]}],"env":{"A=B":"c"}}`,
	}
	for name, content := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".json")
		writeFile(t, p, content, 0o644)
		if _, err := LoadConfig(p); err == nil || exitCode(err) != 1 {
			t.Errorf("%s: got %v", name, err)
		}
	}
	_, err := LoadConfig(filepath.Join(dir, "missing.json"))
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("missing: %v", err)
	}
	p := filepath.Join(dir, "ok.json")
	writeFile(t, p, `{"processes":[{"type":"web","command":["a"],"future-field":1}],"extra":true}`, 0o644)
	cfg, err := LoadConfig(p)
	if err != nil {
		t.Fatalf("unknown fields must be ignored: %v", err)
	}
	if !cfg.Processes[0].IsDirect() {
		t.Fatal("direct must default to true")
	}
}

// ---- env files -------------------------------------------------------------

func TestSplitEnvFile(t *testing.T) {
	cases := map[string][2]string{
		"PATH":             {"PATH", ""},
		"PATH.prepend":     {"PATH", "prepend"},
		"JAVA_OPTS.append": {"JAVA_OPTS", "append"},
		"A.delim":          {"A", "delim"},
		"A.override":       {"A", "override"},
		"A.default":        {"A", "default"},
		"my.var":           {"my.var", ""},
		".prepend":         {".prepend", ""},
		"a.b.c.default":    {"a.b.c", "default"},
	}
	for in, want := range cases {
		n, s := splitEnvFile(in)
		if n != want[0] || s != want[1] {
			t.Errorf("%s: got %s,%s", in, n, s)
		}
	}
}

func TestApplyEnvDirRules(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"PLAIN":             "plain-value",
		"OVR.override":      "overridden",
		"BOTH":              "from-plain",
		"BOTH.override":     "from-override",
		"DEF_UNSET.default": "d1",
		"DEF_SET.default":   "d2",
		"DEF_EMPTY.default": "d3",
		"PRE.prepend":       "/new",
		"PRE.delim":         ":",
		"APP.append":        "-Xmx1g",
		"APP.delim":         " ",
		"NODELIM.append":    "b",
		"NEWPRE.prepend":    "/only",
		"NEWPRE.delim":      ":",
		"WS":                "  keep spaces\n",
	}
	for n, c := range files {
		writeFile(t, filepath.Join(dir, n), c, 0o644)
	}
	if err := os.Mkdir(filepath.Join(dir, "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	env := envOf("PLAIN=old", "OVR=old", "DEF_SET=platform", "DEF_EMPTY=", "PRE=/old", "APP=-Dx=1", "NODELIM=a")
	if err := ApplyEnvDir(env, dir); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"PLAIN":     "plain-value",
		"OVR":       "overridden",
		"BOTH":      "from-override",
		"DEF_UNSET": "d1",
		"DEF_SET":   "platform",
		"DEF_EMPTY": "",
		"PRE":       "/new:/old",
		"APP":       "-Dx=1 -Xmx1g",
		"NODELIM":   "ab",
		"NEWPRE":    "/only",
		"WS":        "  keep spaces\n",
	}
	for k, v := range want {
		if got := mustGet(t, env, k); got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	if _, ok := env.get("subdir"); ok {
		t.Error("directories must be skipped")
	}
	if err := ApplyEnvDir(env, filepath.Join(dir, "missing")); err != nil {
		t.Fatalf("missing dir: %v", err)
	}
}

func TestApplyEnvDirInvalidName(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "A=B"), "x", 0o644)
	if err := ApplyEnvDir(envOf(), dir); err == nil {
		t.Fatal("expected an error")
	}
}

func TestBuildEnvPrecedence(t *testing.T) {
	root := t.TempDir()
	l1 := filepath.Join(root, "bp1", "layer1")
	l2 := filepath.Join(root, "bp2", "layer2")
	l3 := filepath.Join(root, "bp2", "empty") // no bin, lib or env
	for _, d := range []string{filepath.Join(l1, "bin"), filepath.Join(l1, "lib"), filepath.Join(l2, "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// layer1: env < env.launch < env.launch/web
	writeFile(t, filepath.Join(l1, "env", "ORDER"), "env", 0o644)
	writeFile(t, filepath.Join(l1, "env.launch", "ORDER"), "env.launch", 0o644)
	writeFile(t, filepath.Join(l1, "env.launch", "web", "ORDER"), "env.launch/web", 0o644)
	writeFile(t, filepath.Join(l1, "env.launch", "worker", "WORKER_ONLY"), "x", 0o644)
	writeFile(t, filepath.Join(l1, "env.build", "BUILD_ONLY"), "x", 0o644)
	writeFile(t, filepath.Join(l1, "env", "PORT.default"), "9999", 0o644)
	writeFile(t, filepath.Join(l1, "env", "LAYERS.append"), "l1", 0o644)
	writeFile(t, filepath.Join(l1, "env", "LAYERS.delim"), ",", 0o644)
	writeFile(t, filepath.Join(l1, "env", "FROM_JSON"), "layer", 0o644)
	// layer2 is applied after layer1.
	writeFile(t, filepath.Join(l2, "env", "LAYERS.append"), "l2", 0o644)
	writeFile(t, filepath.Join(l2, "env", "LAYERS.delim"), ",", 0o644)
	writeFile(t, filepath.Join(l2, "env.launch", "LATER"), "l2", 0o644)
	writeFile(t, filepath.Join(l1, "env.launch", "LATER"), "l1", 0o644)
	writeFile(t, filepath.Join(l2, "env.launch", "PATH.append"), "/appended", 0o644)
	writeFile(t, filepath.Join(l2, "env.launch", "PATH.delim"), ":", 0o644)

	cfg := &Config{
		Processes: []Process{{Type: "web", Command: []string{"x"}}},
		Layers:    []string{l1, filepath.Join(root, "does-not-exist"), l3, l2},
		Env:       map[string]string{"FROM_JSON": "json", "EXTRA": "1"},
	}

	t.Run("platform PORT wins over .default", func(t *testing.T) {
		env := envOf("PATH=/usr/bin:/bin", "PORT=5000", "LD_LIBRARY_PATH=")
		if err := BuildEnv(env, cfg, "web"); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"PATH":            filepath.Join(l2, "bin") + ":" + filepath.Join(l1, "bin") + ":/usr/bin:/bin:/appended",
			"LD_LIBRARY_PATH": filepath.Join(l1, "lib"),
			"ORDER":           "env.launch/web",
			"LAYERS":          "l1,l2",
			"LATER":           "l2",
			"FROM_JSON":       "json",
			"EXTRA":           "1",
			"PORT":            "5000",
		}
		for k, v := range want {
			if got := mustGet(t, env, k); got != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
		for _, k := range []string{"WORKER_ONLY", "BUILD_ONLY"} {
			if _, ok := env.get(k); ok {
				t.Errorf("%s must not be set for web", k)
			}
		}
	})
	t.Run(".default applies when unset", func(t *testing.T) {
		env := envOf()
		if err := BuildEnv(env, cfg, "worker"); err != nil {
			t.Fatal(err)
		}
		if got := mustGet(t, env, "PORT"); got != "9999" {
			t.Errorf("PORT = %q", got)
		}
		if got := mustGet(t, env, "ORDER"); got != "env.launch" {
			t.Errorf("ORDER = %q", got)
		}
		if got := mustGet(t, env, "WORKER_ONLY"); got != "x" {
			t.Errorf("WORKER_ONLY = %q", got)
		}
		if got := mustGet(t, env, "PATH"); got != filepath.Join(l2, "bin")+":"+filepath.Join(l1, "bin")+":/appended" {
			t.Errorf("PATH = %q", got)
		}
	})
	t.Run("PORT defaults to 8080", func(t *testing.T) {
		env := envOf()
		if err := BuildEnv(env, &Config{}, "web"); err != nil {
			t.Fatal(err)
		}
		if got := mustGet(t, env, "PORT"); got != "8080" {
			t.Errorf("PORT = %q", got)
		}
	})
	t.Run("launch.json env overrides layers and image", func(t *testing.T) {
		env := envOf("EXTRA=image")
		if err := BuildEnv(env, cfg, "web"); err != nil {
			t.Fatal(err)
		}
		if got := mustGet(t, env, "EXTRA"); got != "1" {
			t.Errorf("EXTRA = %q", got)
		}
	})
}

// ---- expansion ---------------------------------------------------------------

func TestExpand(t *testing.T) {
	env := envOf("PORT=8080", "HOME=/home/app", "EMPTY=", "A_1=x")
	cases := map[string]string{
		"0.0.0.0:$PORT": "0.0.0.0:8080",
		"${PORT}":       "8080",
		"${PORT}0":      "80800",
		"$PORTX":        "",
		"${PORT}X":      "8080X",
		"$HOME/app":     "/home/app/app",
		"$A_1.$A_1":     "x.x",
		"$UNSET-x":      "-x",
		"$EMPTY":        "",
		"$$PORT":        "$PORT",
		"cost: 5$":      "cost: 5$",
		"$1":            "$1",
		"a $ b":         "a $ b",
		"${unclosed":    "${unclosed",
		"${PORT:-80}":   "${PORT:-80}",
		"no vars":       "no vars",
		"$PORT$PORT":    "80808080",
		"${":            "${",
		"$":             "$",
	}
	for in, want := range cases {
		if got := Expand(in, env.get); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}

// ---- Prepare -------------------------------------------------------------------

func TestPrepareDirect(t *testing.T) {
	root := t.TempDir()
	layer := filepath.Join(root, "layers", "bp", "venv")
	writeFile(t, filepath.Join(layer, "bin", "gunicorn"), "#!/bin/false\n", 0o755)
	writeFile(t, filepath.Join(layer, "env.launch", "APP_MODULE.default"), "app:app", 0o644)
	cfgPath := writeConfig(t, root, &Config{
		Processes: []Process{{
			Type:    "web",
			Command: []string{"gunicorn", "-b", "0.0.0.0:$PORT", "$APP_MODULE"},
			Args:    []string{"--workers=${WORKERS}"},
			Direct:  boolp(true),
			Default: true,
		}},
		Layers: []string{layer},
		Env:    map[string]string{"WORKERS": "3"},
	})
	plan, err := Prepare(
		[]string{"/cnb/process/web", "--log-level", "$PORT"},
		[]string{"CNB_LAUNCH_CONFIG=" + cfgPath, "PATH=/usr/bin"},
	)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(layer, "bin", "gunicorn"); plan.Path != want {
		t.Errorf("path %s, want %s", plan.Path, want)
	}
	wantArgv := []string{"gunicorn", "-b", "0.0.0.0:8080", "app:app", "--workers=3", "--log-level", "$PORT"}
	if !reflect.DeepEqual(plan.Argv, wantArgv) {
		t.Errorf("argv %q, want %q", plan.Argv, wantArgv)
	}
	if plan.Dir != "/workspace" {
		t.Errorf("dir %s", plan.Dir)
	}
	envs := strings.Join(plan.Env, "\n")
	for _, want := range []string{"PORT=8080", "WORKERS=3", "APP_MODULE=app:app", "PATH=" + filepath.Join(layer, "bin") + ":/usr/bin"} {
		if !strings.Contains(envs, want+"\n") && !strings.HasSuffix(envs, want) {
			t.Errorf("env lacks %s:\n%s", want, envs)
		}
	}
}

func TestPrepareCommandNotFound(t *testing.T) {
	root := t.TempDir()
	cfgPath := writeConfig(t, root, &Config{Processes: []Process{{Type: "web", Command: []string{"nope-not-here"}, Default: true}}})
	_, err := Prepare([]string{"launcher"}, []string{"CNB_LAUNCH_CONFIG=" + cfgPath, "PATH=/opt/a:/opt/b"})
	if err == nil {
		t.Fatal("expected an error")
	}
	if exitCode(err) != exitNotFound || !strings.Contains(err.Error(), `"nope-not-here" not found in PATH=/opt/a:/opt/b`) {
		t.Fatalf("got %d %v", exitCode(err), err)
	}
	// A file that exists but is not executable.
	writeFile(t, filepath.Join(root, "bin", "script"), "x", 0o644)
	cfgPath = writeConfig(t, root, &Config{Processes: []Process{{Type: "web", Command: []string{"script"}, Default: true}}})
	_, err = Prepare([]string{"launcher"}, []string{"CNB_LAUNCH_CONFIG=" + cfgPath, "PATH=" + filepath.Join(root, "bin")})
	if err == nil || exitCode(err) != exitExecFail || !strings.Contains(err.Error(), "not executable") {
		t.Fatalf("got %v", err)
	}
}

func TestPrepareRelativeCommandUsesWorkingDir(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "app", "bin", "server"), "", 0o755)
	cfgPath := writeConfig(t, root, &Config{Processes: []Process{{
		Type: "web", Command: []string{"./bin/server"}, WorkingDir: filepath.Join(root, "app"), Default: true,
	}}})
	plan, err := Prepare([]string{"launcher"}, []string{"CNB_LAUNCH_CONFIG=" + cfgPath})
	if err != nil {
		t.Fatal(err)
	}
	if plan.Path != filepath.Join(root, "app", "bin", "server") || plan.Dir != filepath.Join(root, "app") {
		t.Fatalf("got %+v", plan)
	}
}

func TestPrepareShellProcess(t *testing.T) {
	root := t.TempDir()
	cfgPath := writeConfig(t, root, &Config{Processes: []Process{{
		Type: "web", Command: []string{"bundle", "exec", "rails", "s", "-p", "$PORT"}, Args: []string{"-e", "production"},
		Direct: boolp(false), Default: true,
	}}})
	env := []string{"CNB_LAUNCH_CONFIG=" + cfgPath}

	fakeShell := filepath.Join(root, "sh")
	writeFile(t, fakeShell, "", 0o755)
	old := shellPath
	shellPath = fakeShell
	defer func() { shellPath = old }()

	plan, err := Prepare([]string{"launcher"}, env)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{fakeShell, "-c", "bundle exec rails s -p $PORT -e production", "web"}
	if !reflect.DeepEqual(plan.Argv, want) || plan.Path != fakeShell {
		t.Fatalf("argv %q", plan.Argv)
	}
	plan, err = Prepare([]string{"launcher", "--verbose", "a b"}, env)
	if err != nil {
		t.Fatal(err)
	}
	want = []string{fakeShell, "-c", `bundle exec rails s -p $PORT -e production "$@"`, "web", "--verbose", "a b"}
	if !reflect.DeepEqual(plan.Argv, want) {
		t.Fatalf("argv %q", plan.Argv)
	}

	shellPath = filepath.Join(root, "no-such-shell")
	_, err = Prepare([]string{"launcher"}, env)
	if err == nil || err.Error() != "process 'web' needs a shell but this image has none; declare it direct" {
		t.Fatalf("got %v", err)
	}
	if exitCode(err) == 0 {
		t.Fatal("exit code must be non-zero")
	}
}

// ---- integration: the real main() ------------------------------------------

type runResult struct {
	stdout, stderr string
	code           int
	pid            int
}

func runLauncher(t *testing.T, argv0 string, args []string, env []string) runResult {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if argv0 == "" {
		argv0 = exe
	}
	cmd := exec.Command(argv0, args...)
	cmd.Env = append([]string{"NOOPS_LAUNCHER_AS_MAIN=1"}, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return runResult{out.String(), errb.String(), code, cmd.Process.Pid}
}

func hostTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not available", name)
	}
	return p
}

func TestMainExecsDirectProcess(t *testing.T) {
	sh := hostTool(t, "sh")
	root := t.TempDir()
	layer := filepath.Join(root, "layer")
	writeFile(t, filepath.Join(layer, "env.launch", "GREETING"), "hello", 0o644)
	cfgPath := writeConfig(t, root, &Config{
		Processes: []Process{{
			Type: "web", Default: true, Direct: boolp(true), WorkingDir: root,
			// "$$$$" reaches the shell as "$$": the shell prints its own PID,
			// which must be the launcher's PID (exec, not fork).
			Command: []string{"sh", "-c", `echo "$$$$ $GREETING $PORT $(pwd)" "$@"`, "sh"},
		}},
		Layers: []string{layer},
	})
	r := runLauncher(t, "", []string{"extra arg"}, []string{"CNB_LAUNCH_CONFIG=" + cfgPath, "PATH=" + filepath.Dir(sh)})
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	want := strconv.Itoa(r.pid) + " hello 8080 " + root + " extra arg\n"
	if r.stdout != want {
		t.Fatalf("stdout %q, want %q", r.stdout, want)
	}
}

func TestMainShellProcess(t *testing.T) {
	if _, err := os.Stat(shellPath); err != nil {
		t.Skip("no /bin/sh")
	}
	root := t.TempDir()
	cfgPath := writeConfig(t, root, &Config{Processes: []Process{{
		Type: "web", Default: true, Direct: boolp(false), WorkingDir: root,
		Command: []string{"echo", "port=$PORT"},
	}}})
	r := runLauncher(t, "", []string{"a  b", "$PORT"}, []string{"CNB_LAUNCH_CONFIG=" + cfgPath, "PORT=7000", "PATH=/usr/bin:/bin"})
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if r.stdout != "port=7000 a  b $PORT\n" {
		t.Fatalf("stdout %q", r.stdout)
	}
}

func TestMainSymlinkInvocation(t *testing.T) {
	hostTool(t, "echo")
	root := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	pdir := filepath.Join(root, "cnb", "process")
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"web", "worker", "cron"} {
		if err := os.Symlink(exe, filepath.Join(pdir, typ)); err != nil {
			t.Fatal(err)
		}
	}
	cfgPath := writeConfig(t, root, &Config{Processes: []Process{
		{Type: "web", Default: true, Command: []string{"echo", "web"}, WorkingDir: root},
		{Type: "worker", Command: []string{"echo", "worker"}, WorkingDir: root},
	}})
	env := []string{"CNB_LAUNCH_CONFIG=" + cfgPath, "NOOPS_TEST_PROCESS_DIR=" + pdir, "PATH=/usr/bin:/bin", "CNB_PROCESS_TYPE=web"}

	r := runLauncher(t, filepath.Join(pdir, "worker"), nil, env)
	if r.code != 0 || r.stdout != "worker\n" {
		t.Fatalf("worker: exit %d out %q err %q", r.code, r.stdout, r.stderr)
	}
	r = runLauncher(t, filepath.Join(pdir, "cron"), nil, env)
	if r.code != 1 || !strings.HasPrefix(r.stderr, "noops-launcher: unknown process type 'cron'") || !strings.Contains(r.stderr, "known types: web, worker") {
		t.Fatalf("cron: exit %d err %q", r.code, r.stderr)
	}
}

func TestMainErrors(t *testing.T) {
	root := t.TempDir()
	check := func(name string, r runResult, code int, substr string) {
		t.Helper()
		if r.code != code {
			t.Errorf("%s: exit %d, want %d (stderr %q)", name, r.code, code, r.stderr)
		}
		if !strings.HasPrefix(r.stderr, "noops-launcher: ") || !strings.Contains(r.stderr, substr) {
			t.Errorf("%s: stderr %q lacks %q", name, r.stderr, substr)
		}
		if strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%s: error must be one line: %q", name, r.stderr)
		}
	}
	missing := filepath.Join(root, "missing.json")
	check("missing config", runLauncher(t, "", nil, []string{"CNB_LAUNCH_CONFIG=" + missing}), 1, missing+" not found")

	bad := filepath.Join(root, "bad.json")
	writeFile(t, bad, "{not json", 0o644)
	check("bad json", runLauncher(t, "", nil, []string{"CNB_LAUNCH_CONFIG=" + bad}), 1, "not valid JSON")

	cfgPath := writeConfig(t, root, &Config{Processes: []Process{{Type: "web", Default: true, Command: []string{"gunicorn"}}}})
	check("not found", runLauncher(t, "", nil, []string{"CNB_LAUNCH_CONFIG=" + cfgPath, "PATH=/nowhere"}), 127, `"gunicorn" not found in PATH=/nowhere`)

	check("unknown type", runLauncher(t, "", nil, []string{"CNB_LAUNCH_CONFIG=" + cfgPath, "CNB_PROCESS_TYPE=worker"}), 1, "known types: web")

	sh := hostTool(t, "true")
	cfgPath = writeConfig(t, root, &Config{Processes: []Process{{Type: "web", Default: true, Command: []string{sh}, WorkingDir: filepath.Join(root, "nodir")}}})
	check("bad working dir", runLauncher(t, "", nil, []string{"CNB_LAUNCH_CONFIG=" + cfgPath}), 1, "cannot enter working directory")
}
