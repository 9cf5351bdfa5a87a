package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const secret = "TOP-SECRET-CONTENT"

var (
	indexHTML = "<!doctype html><title>home</title>" + strings.Repeat("<p>hello world</p>\n", 40)
	styleCSS  = strings.Repeat("body { color: #333; margin: 0 auto; }\n", 30)
	appJS     = strings.Repeat("console.log('hello');\n", 30)
	notFound  = "<!doctype html><h1>custom not found</h1>"
)

// site builds:
//
//	tmp/outside/secret.txt
//	tmp/site/{index.html, style.css, app.js, logo.png, tiny.txt, 404.html, .env,
//	          .well-known/security.txt, about/index.html, docs/a.txt,
//	          link-inside -> style.css, link-outside -> ../outside/secret.txt,
//	          dir-outside -> ../outside, abs-outside -> /abs/path/outside/secret.txt}
func site(t *testing.T, with404 bool) (root, outside string) {
	t.Helper()
	tmp := t.TempDir()
	root = filepath.Join(tmp, "site")
	outside = filepath.Join(tmp, "outside")
	files := map[string]string{
		"index.html":               indexHTML,
		"style.css":                styleCSS,
		"app.js":                   appJS,
		"logo.png":                 "\x89PNG\r\n\x1a\n" + strings.Repeat("\x00", 600),
		"tiny.txt":                 "tiny",
		".env":                     secret,
		".git/config":              secret,
		".well-known/security.txt": "Contact: mailto:security@example.com\n",
		"about/index.html":         "<h1>about</h1>",
		"docs/a.txt":               "doc a",
		"noext":                    "plain text without extension",
	}
	if with404 {
		files["404.html"] = notFound
	}
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "secret.txt"), []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	links := map[string]string{
		"link-inside":     "style.css",
		"link-outside":    "../outside/secret.txt",
		"dir-outside":     "../outside",
		"abs-outside":     filepath.Join(outside, "secret.txt"),
		"about/up-inside": "../style.css",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	return root, outside
}

type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func do(h http.Handler, method, target string, hdr map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func get(h http.Handler, target string) *httptest.ResponseRecorder {
	return do(h, "GET", target, nil)
}

func expectStatus(t *testing.T, rec *httptest.ResponseRecorder, target string, want int) {
	t.Helper()
	if rec.Code != want {
		t.Fatalf("%s: status %d, want %d (body %q)", target, rec.Code, want, rec.Body.String())
	}
}

// ---- directories and index ---------------------------------------------------

func TestIndexAndDirectories(t *testing.T) {
	root, _ := site(t, true)
	h := NewHandler(root, false, "/healthz", nil)

	rec := get(h, "/")
	expectStatus(t, rec, "/", 200)
	if rec.Body.String() != indexHTML {
		t.Fatal("/ must serve index.html")
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Fatalf("content type %q", ct)
	}

	rec = get(h, "/about/")
	expectStatus(t, rec, "/about/", 200)
	if rec.Body.String() != "<h1>about</h1>" {
		t.Fatalf("body %q", rec.Body.String())
	}

	rec = get(h, "/about?x=1")
	expectStatus(t, rec, "/about", 301)
	if loc := rec.Header().Get("Location"); loc != "/about/?x=1" {
		t.Fatalf("location %q", loc)
	}

	rec = get(h, "/style.css/")
	expectStatus(t, rec, "/style.css/", 301)
	if loc := rec.Header().Get("Location"); loc != "/style.css" {
		t.Fatalf("location %q", loc)
	}

	rec = get(h, "/index.html")
	expectStatus(t, rec, "/index.html", 200)
}

func TestNoDirectoryListing(t *testing.T) {
	root, _ := site(t, false)
	h := NewHandler(root, false, "", nil)
	for _, target := range []string{"/docs/", "/docs", "/.well-known/", "/about/../docs/"} {
		rec := get(h, target)
		expectStatus(t, rec, target, 404)
		if strings.Contains(rec.Body.String(), "a.txt") || strings.Contains(rec.Body.String(), "security.txt") {
			t.Fatalf("%s: listing leaked: %q", target, rec.Body.String())
		}
	}
	expectStatus(t, get(h, "/docs/a.txt"), "/docs/a.txt", 200)
}

// ---- content types, HEAD, caching -------------------------------------------

func TestContentTypes(t *testing.T) {
	root, _ := site(t, false)
	h := NewHandler(root, false, "", nil)
	cases := map[string]string{
		"/style.css":                "text/css; charset=utf-8",
		"/app.js":                   "text/javascript; charset=utf-8",
		"/logo.png":                 "image/png",
		"/tiny.txt":                 "text/plain; charset=utf-8",
		"/noext":                    "text/plain; charset=utf-8", // sniffed
		"/.well-known/security.txt": "text/plain; charset=utf-8",
	}
	for target, want := range cases {
		rec := get(h, target)
		expectStatus(t, rec, target, 200)
		if got := rec.Header().Get("Content-Type"); got != want {
			t.Errorf("%s: content type %q, want %q", target, got, want)
		}
	}
}

func TestHead(t *testing.T) {
	root, _ := site(t, true)
	h := NewHandler(root, false, "/healthz", nil)
	rec := do(h, "HEAD", "/style.css", nil)
	expectStatus(t, rec, "HEAD /style.css", 200)
	if rec.Body.Len() != 0 {
		t.Fatal("HEAD must have no body")
	}
	if cl := rec.Header().Get("Content-Length"); cl != fmt.Sprint(len(styleCSS)) {
		t.Fatalf("content length %q", cl)
	}
	rec = do(h, "HEAD", "/missing", nil)
	expectStatus(t, rec, "HEAD /missing", 404)
	if rec.Body.Len() != 0 {
		t.Fatal("HEAD 404 must have no body")
	}
	rec = do(h, "HEAD", "/healthz", nil)
	expectStatus(t, rec, "HEAD /healthz", 200)
	if rec.Body.Len() != 0 {
		t.Fatal("HEAD health must have no body")
	}
}

func TestMethodNotAllowed(t *testing.T) {
	root, _ := site(t, false)
	h := NewHandler(root, false, "", nil)
	for _, m := range []string{"POST", "PUT", "DELETE", "OPTIONS"} {
		rec := do(h, m, "/index.html", nil)
		expectStatus(t, rec, m, 405)
		if rec.Header().Get("Allow") != "GET, HEAD" {
			t.Fatalf("%s: Allow %q", m, rec.Header().Get("Allow"))
		}
	}
}

func TestETagAndLastModified(t *testing.T) {
	root, _ := site(t, false)
	normalized := time.Date(1980, 1, 1, 0, 0, 1, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(root, "style.css"), normalized, normalized); err != nil {
		t.Fatal(err)
	}
	real := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	if err := os.Chtimes(filepath.Join(root, "app.js"), real, real); err != nil {
		t.Fatal(err)
	}
	h := NewHandler(root, false, "", nil)

	rec := get(h, "/style.css")
	etag := rec.Header().Get("ETag")
	if !strings.HasPrefix(etag, `"`) || len(etag) < 10 {
		t.Fatalf("etag %q", etag)
	}
	if lm := rec.Header().Get("Last-Modified"); lm != "" {
		t.Fatalf("no Last-Modified expected for a normalized mtime, got %q", lm)
	}
	rec = do(h, "GET", "/style.css", map[string]string{"If-None-Match": etag})
	expectStatus(t, rec, "If-None-Match", 304)
	rec = do(h, "GET", "/style.css", map[string]string{"If-None-Match": `"other"`})
	expectStatus(t, rec, "If-None-Match other", 200)

	// Same size and mtime but different content: a different ETag.
	if err := os.WriteFile(filepath.Join(root, "style.css"), []byte(strings.Repeat("x", len(styleCSS))), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(root, "style.css"), normalized, normalized); err != nil {
		t.Fatal(err)
	}
	h2 := NewHandler(root, false, "", nil) // a new container
	if get(h2, "/style.css").Header().Get("ETag") == etag {
		t.Fatal("ETag must depend on content")
	}

	rec = get(h, "/app.js")
	lm := rec.Header().Get("Last-Modified")
	if lm != real.Format(http.TimeFormat) {
		t.Fatalf("Last-Modified %q", lm)
	}
	rec = do(h, "GET", "/app.js", map[string]string{"If-Modified-Since": lm})
	expectStatus(t, rec, "If-Modified-Since", 304)
}

func TestRange(t *testing.T) {
	root, _ := site(t, false)
	h := NewHandler(root, false, "", nil)
	rec := do(h, "GET", "/style.css", map[string]string{"Range": "bytes=0-3"})
	expectStatus(t, rec, "range", 206)
	if rec.Body.String() != styleCSS[:4] {
		t.Fatalf("body %q", rec.Body.String())
	}
}

// ---- traversal and symlinks --------------------------------------------------

func TestTraversal(t *testing.T) {
	root, _ := site(t, true)
	targets := []string{
		"/../outside/secret.txt",
		"/../../../../etc/passwd",
		"/about/../../outside/secret.txt",
		"/%2e%2e/outside/secret.txt",
		"/%2E%2E/outside/secret.txt",
		"/..%2foutside%2fsecret.txt",
		"/about/%2e%2e%2f%2e%2e%2foutside/secret.txt",
		"/link-outside",
		"/abs-outside",
		"/dir-outside/secret.txt",
		"/dir-outside/",
		"/.env",
		"/.git/config",
		"/about/../.env",
		"/%2eenv",
		"/x/..%2f.env",
	}
	for _, spa := range []bool{false, true} {
		h := NewHandler(root, spa, "/healthz", nil)
		for _, target := range targets {
			rec := get(h, target)
			if strings.Contains(rec.Body.String(), secret) {
				t.Fatalf("spa=%v %s: secret leaked", spa, target)
			}
			want := 404
			if spa {
				want = 200 // index.html, never the target
			}
			expectStatus(t, rec, target, want)
			if spa && rec.Body.String() != indexHTML {
				t.Fatalf("spa %s: unexpected body", target)
			}
		}
	}
	// Symlinks that stay inside the root are followed.
	h := NewHandler(root, false, "", nil)
	for _, target := range []string{"/link-inside", "/about/up-inside"} {
		rec := get(h, target)
		expectStatus(t, rec, target, 200)
		if rec.Body.String() != styleCSS {
			t.Fatalf("%s: body mismatch", target)
		}
	}
}

func TestRootIsSymlink(t *testing.T) {
	root, _ := site(t, false)
	link := filepath.Join(t.TempDir(), "public")
	if err := os.Symlink(root, link); err != nil {
		t.Fatal(err)
	}
	h := NewHandler(link, false, "", nil)
	expectStatus(t, get(h, "/style.css"), "/style.css via symlinked root", 200)
	expectStatus(t, get(h, "/link-outside"), "/link-outside via symlinked root", 404)
}

func TestTraversalOverTCP(t *testing.T) {
	// The http client cleans nothing, but to be sure the raw bytes reach the
	// server as written, send them by hand.
	root, _ := site(t, true)
	srv := httptest.NewServer(NewHandler(root, false, "", nil))
	defer srv.Close()
	for _, target := range []string{"/../outside/secret.txt", "/%2e%2e/outside/secret.txt", "/..%2f..%2foutside/secret.txt", "/./../outside/secret.txt"} {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", target)
		resp, err := io.ReadAll(conn)
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(resp), secret) {
			t.Fatalf("%s: secret leaked", target)
		}
		if !strings.HasPrefix(string(resp), "HTTP/1.1 404") && !strings.HasPrefix(string(resp), "HTTP/1.1 400") {
			t.Fatalf("%s: %q", target, firstLine(resp))
		}
	}
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\r\n")
	return s
}

func TestWellKnownAllowed(t *testing.T) {
	root, _ := site(t, false)
	h := NewHandler(root, false, "", nil)
	expectStatus(t, get(h, "/.well-known/security.txt"), "/.well-known/security.txt", 200)
}

// ---- 404 ---------------------------------------------------------------------

func TestCustom404(t *testing.T) {
	root, _ := site(t, true)
	h := NewHandler(root, false, "", nil)
	rec := get(h, "/nope")
	expectStatus(t, rec, "/nope", 404)
	if rec.Body.String() != notFound {
		t.Fatalf("body %q", rec.Body.String())
	}
	if ct := rec.Header().Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Fatalf("content type %q", ct)
	}
	if rec.Header().Get("ETag") != "" || rec.Header().Get("Content-Encoding") != "" {
		t.Fatal("404 must carry no ETag/encoding")
	}

	root2, _ := site(t, false)
	rec = get(NewHandler(root2, false, "", nil), "/nope")
	expectStatus(t, rec, "/nope (no 404.html)", 404)
	if rec.Body.String() != "404 page not found\n" {
		t.Fatalf("body %q", rec.Body.String())
	}
}

func Test404HTMLSymlinkOutsideIgnored(t *testing.T) {
	root, outside := site(t, false)
	if err := os.Symlink(filepath.Join(outside, "secret.txt"), filepath.Join(root, "404.html")); err != nil {
		t.Fatal(err)
	}
	rec := get(NewHandler(root, false, "", nil), "/nope")
	expectStatus(t, rec, "/nope", 404)
	if strings.Contains(rec.Body.String(), secret) {
		t.Fatal("404.html pointing outside root must not be served")
	}
}

// ---- SPA ---------------------------------------------------------------------

func TestSPA(t *testing.T) {
	root, _ := site(t, true)
	h := NewHandler(root, true, "/healthz", nil)
	for _, target := range []string{"/users/42", "/deep/a/b/c", "/docs/", "/missing.js"} {
		rec := get(h, target)
		expectStatus(t, rec, target, 200)
		if rec.Body.String() != indexHTML {
			t.Fatalf("%s: expected index.html", target)
		}
	}
	// Real files are still served as themselves.
	rec := get(h, "/style.css")
	if rec.Body.String() != styleCSS {
		t.Fatal("style.css must be served as is")
	}
	// Without index.html, SPA mode falls back to 404.html.
	if err := os.Remove(filepath.Join(root, "index.html")); err != nil {
		t.Fatal(err)
	}
	rec = get(h, "/users/42")
	expectStatus(t, rec, "/users/42 without index", 404)
	if rec.Body.String() != notFound {
		t.Fatalf("body %q", rec.Body.String())
	}
	// Without -spa unknown paths are 404.
	expectStatus(t, get(NewHandler(root, false, "", nil), "/users/42"), "/users/42", 404)
}

// ---- gzip --------------------------------------------------------------------

func gunzip(t *testing.T, b []byte) string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestGzip(t *testing.T) {
	root, _ := site(t, false)
	h := NewHandler(root, false, "", nil)

	plain := get(h, "/style.css")
	if plain.Header().Get("Content-Encoding") != "" {
		t.Fatal("no gzip without Accept-Encoding")
	}
	if plain.Header().Get("Vary") != "Accept-Encoding" {
		t.Fatalf("Vary %q", plain.Header().Get("Vary"))
	}

	for i := 0; i < 2; i++ { // second time from the cache
		rec := do(h, "GET", "/style.css", map[string]string{"Accept-Encoding": "br, gzip;q=0.8"})
		expectStatus(t, rec, "gzip", 200)
		if rec.Header().Get("Content-Encoding") != "gzip" {
			t.Fatalf("expected gzip, headers %v", rec.Header())
		}
		if rec.Header().Get("Vary") != "Accept-Encoding" || rec.Header().Get("Content-Type") != "text/css; charset=utf-8" {
			t.Fatalf("headers %v", rec.Header())
		}
		if rec.Body.Len() >= len(styleCSS) {
			t.Fatal("not compressed")
		}
		if gunzip(t, rec.Body.Bytes()) != styleCSS {
			t.Fatal("gzip body mismatch")
		}
		if rec.Header().Get("ETag") == plain.Header().Get("ETag") {
			t.Fatal("gzip representation needs its own ETag")
		}
		etag := rec.Header().Get("ETag")
		rec = do(h, "GET", "/style.css", map[string]string{"Accept-Encoding": "gzip", "If-None-Match": etag})
		expectStatus(t, rec, "gzip 304", 304)
	}

	for _, ae := range []string{"gzip;q=0", "identity", "br", "*;q=0", "gzip;q=0, *"} {
		rec := do(h, "GET", "/app.js", map[string]string{"Accept-Encoding": ae})
		if rec.Header().Get("Content-Encoding") != "" {
			t.Errorf("Accept-Encoding %q: must not gzip", ae)
		}
	}
	rec := do(h, "GET", "/app.js", map[string]string{"Accept-Encoding": "*"})
	if rec.Header().Get("Content-Encoding") != "gzip" {
		t.Error("'*' accepts gzip")
	}
	// Binary and tiny files are not compressed.
	for _, target := range []string{"/logo.png", "/tiny.txt"} {
		rec := do(h, "GET", target, map[string]string{"Accept-Encoding": "gzip"})
		expectStatus(t, rec, target, 200)
		if rec.Header().Get("Content-Encoding") != "" {
			t.Errorf("%s must not be gzipped", target)
		}
	}
	// HEAD with gzip: headers only.
	rec = do(h, "HEAD", "/index.html", map[string]string{"Accept-Encoding": "gzip"})
	if rec.Header().Get("Content-Encoding") != "gzip" || rec.Body.Len() != 0 {
		t.Fatalf("HEAD gzip: %v %d", rec.Header(), rec.Body.Len())
	}
}

func TestAcceptsGzip(t *testing.T) {
	cases := map[string]bool{
		"":                     false,
		"gzip":                 true,
		"GZIP":                 true,
		"deflate, gzip":        true,
		"gzip;q=0":             false,
		"gzip; q=0.0":          false,
		"gzip;q=0.001":         true,
		"*":                    true,
		"*;q=0":                false,
		"gzip;q=0, *;q=1":      false,
		"identity;q=1, *;q=0":  false,
		"x-gzip":               true,
		"br;q=1.0, gzip;q=0.5": true,
	}
	for in, want := range cases {
		if got := acceptsGzip(in); got != want {
			t.Errorf("acceptsGzip(%q) = %v", in, got)
		}
	}
}

// ---- headers, health, log ------------------------------------------------------

func TestSecurityHeaders(t *testing.T) {
	root, _ := site(t, true)
	h := NewHandler(root, false, "/healthz", nil)
	for _, target := range []string{"/", "/nope", "/healthz", "/about"} {
		for _, m := range []string{"GET", "POST"} {
			rec := do(h, m, target, nil)
			if rec.Header().Get("X-Content-Type-Options") != "nosniff" ||
				rec.Header().Get("Referrer-Policy") != "strict-origin-when-cross-origin" {
				t.Errorf("%s %s: headers %v", m, target, rec.Header())
			}
		}
	}
}

func TestHealth(t *testing.T) {
	root, _ := site(t, false)
	h := NewHandler(root, false, "/healthz", nil)
	rec := get(h, "/healthz")
	expectStatus(t, rec, "/healthz", 200)
	if rec.Body.String() != "ok" {
		t.Fatalf("body %q", rec.Body.String())
	}
	h = NewHandler(filepath.Join(root, "missing"), false, "/healthz", nil)
	expectStatus(t, get(h, "/healthz"), "/healthz without root", 503)
	expectStatus(t, get(h, "/"), "/ without root", 404)

	h = NewHandler(root, false, "", nil)
	expectStatus(t, get(h, "/healthz"), "/healthz disabled", 404)
}

func TestAccessLog(t *testing.T) {
	root, _ := site(t, false)
	var logs logBuf
	h := NewHandler(root, false, "/healthz", &logs)
	get(h, "/style.css?token=abc")
	get(h, "/nope")
	do(h, "HEAD", "/", nil)

	lines := strings.Split(strings.TrimSuffix(logs.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines: %q", len(lines), logs.String())
	}
	var entries []map[string]interface{}
	for _, l := range lines {
		var m map[string]interface{}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
		for _, k := range []string{"time", "method", "path", "status", "bytes", "duration_ms"} {
			if _, ok := m[k]; !ok {
				t.Fatalf("missing %s in %q", k, l)
			}
		}
		if _, err := time.Parse(time.RFC3339Nano, m["time"].(string)); err != nil {
			t.Fatalf("time %v", m["time"])
		}
		entries = append(entries, m)
	}
	if entries[0]["path"] != "/style.css" || entries[0]["status"] != float64(200) || entries[0]["bytes"] != float64(len(styleCSS)) || entries[0]["method"] != "GET" {
		t.Fatalf("entry %v", entries[0])
	}
	if entries[1]["status"] != float64(404) {
		t.Fatalf("entry %v", entries[1])
	}
	if entries[2]["method"] != "HEAD" || entries[2]["bytes"] != float64(0) {
		t.Fatalf("entry %v", entries[2])
	}
}

// ---- run: flags, listening, graceful shutdown ---------------------------------

func TestRunBadFlags(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	var stderr bytes.Buffer
	for _, tc := range []struct {
		args []string
		env  map[string]string
	}{
		{nil, map[string]string{"PORT": "http"}},
		{nil, map[string]string{"PORT": "70000"}},
		{[]string{"-health", "healthz"}, nil},
		{[]string{"-nope"}, nil},
		{[]string{"extra"}, nil},
	} {
		stderr.Reset()
		if code := run(context.Background(), tc.args, env(tc.env), io.Discard, &stderr, nil); code != 2 {
			t.Errorf("%v %v: exit %d", tc.args, tc.env, code)
		}
	}
}

func TestRunServesAndShutsDownGracefully(t *testing.T) {
	root, _ := site(t, false)
	big := bytes.Repeat([]byte{0xAB}, 32<<20)
	if err := os.WriteFile(filepath.Join(root, "big.bin"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrCh := make(chan string, 1)
	done := make(chan int, 1)
	var stdout logBuf
	go func() {
		done <- run(ctx, []string{"-root", root, "-addr", "127.0.0.1:0"}, func(string) string { return "" },
			&stdout, io.Discard, func(a net.Addr) { addrCh <- a.String() })
	}()
	var addr string
	select {
	case addr = <-addrCh:
	case code := <-done:
		t.Fatalf("run exited early with %d", code)
	case <-time.After(5 * time.Second):
		t.Fatal("server did not start")
	}

	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("health %d %q", resp.StatusCode, body)
	}

	// Start a big download, read a little, then ask the server to stop.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	dl, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	head := make([]byte, 4096)
	if _, err := io.ReadFull(dl.Body, head); err != nil {
		t.Fatal(err)
	}
	cancel()

	// New connections are refused soon after the signal...
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting connections after shutdown")
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case code := <-done:
		t.Fatalf("run returned %d before the in-flight request finished", code)
	default:
	}
	// ...while the in-flight download completes.
	rest, err := io.ReadAll(dl.Body)
	if err != nil {
		t.Fatalf("in-flight download cut: %v", err)
	}
	if len(head)+len(rest) != len(big) {
		t.Fatalf("got %d bytes, want %d", len(head)+len(rest), len(big))
	}
	conn.Close()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d", code)
		}
	case <-time.After(shutdownTimeout + 2*time.Second):
		t.Fatal("run did not return")
	}
	if !strings.Contains(stdout.String(), `"path":"/big.bin","status":200,"bytes":33554432`) {
		t.Fatalf("access log: %s", stdout.String())
	}
}
