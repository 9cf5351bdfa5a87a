// Command noops-static-server serves a static site folder.
//
// It runs in the run image of static sites, which has no shell and no libc, so
// it depends on the standard library only and is built with
//
//	CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags='-s -w -buildid=' -o noops-static-server .
//
// Usage:
//
//	noops-static-server [-root /workspace] [-spa] [-health /healthz] [-addr host:port]
//
// It listens on 0.0.0.0:$PORT (default 8080) unless -addr is given.
package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math"
	"mime"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	defaultRoot     = "/workspace"
	defaultPort     = "8080"
	defaultHealth   = "/healthz"
	shutdownTimeout = 10 * time.Second

	// Text files up to this size are gzipped in memory and cached.
	maxGzipFileSize = 8 << 20
	// Total memory for cached gzipped bodies.
	maxGzipCacheBytes = 64 << 20
	// Smaller bodies are not worth compressing.
	minGzipSize = 256
)

// Image layers are written with every mtime set to 1980-01-01T00:00:01Z, so
// such a time says nothing about the content: no Last-Modified is sent for
// it (the content-hash ETag does the revalidation).
var normalizedMtimeCutoff = time.Date(1980, 1, 2, 0, 0, 0, 0, time.UTC)

// Content types registered over the system table (a distroless image has no
// /etc/mime.types, and the build host's one must not change behaviour).
var contentTypes = map[string]string{
	".html":        "text/html; charset=utf-8",
	".htm":         "text/html; charset=utf-8",
	".css":         "text/css; charset=utf-8",
	".js":          "text/javascript; charset=utf-8",
	".mjs":         "text/javascript; charset=utf-8",
	".json":        "application/json",
	".map":         "application/json",
	".webmanifest": "application/manifest+json",
	".xml":         "application/xml",
	".rss":         "application/rss+xml",
	".atom":        "application/atom+xml",
	".txt":         "text/plain; charset=utf-8",
	".md":          "text/markdown; charset=utf-8",
	".csv":         "text/csv; charset=utf-8",
	".ics":         "text/calendar; charset=utf-8",
	".svg":         "image/svg+xml",
	".png":         "image/png",
	".jpg":         "image/jpeg",
	".jpeg":        "image/jpeg",
	".gif":         "image/gif",
	".webp":        "image/webp",
	".avif":        "image/avif",
	".ico":         "image/x-icon",
	".bmp":         "image/bmp",
	".woff":        "font/woff",
	".woff2":       "font/woff2",
	".ttf":         "font/ttf",
	".otf":         "font/otf",
	".eot":         "application/vnd.ms-fontobject",
	".wasm":        "application/wasm",
	".pdf":         "application/pdf",
	".mp4":         "video/mp4",
	".webm":        "video/webm",
	".mp3":         "audio/mpeg",
	".ogg":         "audio/ogg",
	".wav":         "audio/wav",
	".zip":         "application/zip",
	".gz":          "application/gzip",
}

func init() {
	for ext, typ := range contentTypes {
		if err := mime.AddExtensionType(ext, typ); err != nil {
			panic(err)
		}
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, nil))
}

// run parses args, serves until ctx is done, then shuts down gracefully.
// onListen, if not nil, is called with the bound address (for tests).
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, onListen func(net.Addr)) int {
	errorf := func(format string, a ...interface{}) {
		fmt.Fprintf(stderr, "noops-static-server: "+format+"\n", a...)
	}
	fs := flag.NewFlagSet("noops-static-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	root := fs.String("root", defaultRoot, "folder to serve")
	spa := fs.Bool("spa", false, "serve /index.html for unknown paths (pushstate)")
	health := fs.String("health", defaultHealth, "path of the health endpoint (empty to disable)")
	addr := fs.String("addr", "", "listen address (default 0.0.0.0:$PORT)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
		return 2
	}
	if *health != "" && !strings.HasPrefix(*health, "/") {
		errorf("-health must start with '/': %q", *health)
		return 2
	}
	if *addr == "" {
		port := getenv("PORT")
		if port == "" {
			port = defaultPort
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			errorf("invalid PORT %q", port)
			return 2
		}
		*addr = "0.0.0.0:" + port
	}
	absRoot, err := filepath.Abs(*root)
	if err != nil {
		errorf("invalid root %q: %v", *root, err)
		return 2
	}
	if fi, err := os.Stat(absRoot); err != nil || !fi.IsDir() {
		errorf("warning: root %s is not a directory; serving 404s and failing health checks until it exists", absRoot)
	}

	h := NewHandler(absRoot, *spa, *health, stdout)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		errorf("cannot listen on %s: %v", *addr, err)
		return 1
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		ErrorLog:          log.New(stderr, "noops-static-server: ", 0),
	}
	errorf("serving %s on %s", absRoot, ln.Addr())
	if onListen != nil {
		onListen(ln.Addr())
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	select {
	case err := <-serveErr:
		errorf("server stopped: %v", err)
		return 1
	case <-ctx.Done():
	}

	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		errorf("requests still running after %s, closing them: %v", shutdownTimeout, err)
		srv.Close()
	}
	return 0
}

// Handler serves files from Root.
type Handler struct {
	Root   string // absolute
	SPA    bool
	Health string

	logMu sync.Mutex
	log   io.Writer

	etagMu sync.Mutex
	etags  map[string]etagEntry

	gzMu    sync.Mutex
	gz      map[string]gzEntry
	gzBytes int
}

type etagEntry struct {
	size  int64
	mtime time.Time
	tag   string
}

type gzEntry struct {
	tag  string
	data []byte // nil: not worth compressing
}

// NewHandler returns a handler serving root; access logs go to logw.
func NewHandler(root string, spa bool, health string, logw io.Writer) *Handler {
	return &Handler{
		Root: root, SPA: spa, Health: health, log: logw,
		etags: map[string]etagEntry{}, gz: map[string]gzEntry{},
	}
}

// accessLog is one line of the access log.
type accessLog struct {
	Time       string  `json:"time"`
	Method     string  `json:"method"`
	Path       string  `json:"path"`
	Status     int     `json:"status"`
	Bytes      int64   `json:"bytes"`
	DurationMS float64 `json:"duration_ms"`
}

// statusWriter records the status and body size.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// ReadFrom keeps net/http's sendfile path for file bodies.
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
	}
	w.bytes += n
	return n, err
}

func (h *Handler) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	w := &statusWriter{ResponseWriter: rw}
	defer func() {
		status := w.status
		if status == 0 {
			status = http.StatusOK
		}
		ms := float64(time.Since(start).Microseconds()) / 1000
		h.writeLog(accessLog{
			Time:       start.UTC().Format(time.RFC3339Nano),
			Method:     r.Method,
			Path:       r.URL.Path,
			Status:     status,
			Bytes:      w.bytes,
			DurationMS: math.Round(ms*1000) / 1000,
		})
	}()

	hdr := w.Header()
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "strict-origin-when-cross-origin")

	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if h.Health != "" && r.URL.Path == h.Health {
		h.serveHealth(w, r)
		return
	}
	h.serve(w, r)
}

func (h *Handler) writeLog(e accessLog) {
	if h.log == nil {
		return
	}
	line, err := json.Marshal(e)
	if err != nil {
		return
	}
	line = append(line, '\n')
	h.logMu.Lock()
	defer h.logMu.Unlock()
	h.log.Write(line) //nolint:errcheck // nowhere to report it
}

func (h *Handler) serveHealth(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	status, body := http.StatusOK, "ok"
	if fi, err := os.Stat(h.Root); err != nil || !fi.IsDir() {
		status, body = http.StatusServiceUnavailable, "root not found"
	}
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		io.WriteString(w, body) //nolint:errcheck
	}
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) {
	upath := r.URL.Path
	if strings.ContainsRune(upath, 0) {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	if !strings.HasPrefix(upath, "/") {
		upath = "/" + upath
	}
	// path.Clean on a rooted path removes every "..": the result can never
	// name something above the root lexically. r.URL.Path is already
	// percent-decoded, so "%2e%2e" arrives here as "..".
	clean := path.Clean(upath)
	trailingSlash := strings.HasSuffix(upath, "/") && clean != "/"

	if hiddenPath(clean) {
		h.notFound(w, r)
		return
	}
	real, fi, ok := h.resolve(clean)
	if !ok {
		h.notFound(w, r)
		return
	}
	if fi.IsDir() {
		indexReal, indexFi, ok := h.resolve(path.Join(clean, "index.html"))
		if !ok || !indexFi.Mode().IsRegular() {
			h.notFound(w, r) // never list a directory
			return
		}
		if clean != "/" && !trailingSlash {
			h.redirect(w, r, clean+"/")
			return
		}
		h.serveFile(w, r, indexReal, indexFi, "index.html")
		return
	}
	if !fi.Mode().IsRegular() {
		h.notFound(w, r)
		return
	}
	if trailingSlash {
		h.redirect(w, r, clean)
		return
	}
	h.serveFile(w, r, real, fi, path.Base(clean))
}

// hiddenPath reports whether a segment starts with "." (".env", ".git/...");
// /.well-known/ stays reachable.
func hiddenPath(clean string) bool {
	for _, seg := range strings.Split(clean, "/") {
		if strings.HasPrefix(seg, ".") && seg != ".well-known" {
			return true
		}
	}
	return false
}

// resolve maps a clean URL path to a real file path under the root, following
// symlinks, and refuses anything whose real path is outside the root.
func (h *Handler) resolve(clean string) (string, os.FileInfo, bool) {
	rootReal, err := filepath.EvalSymlinks(h.Root)
	if err != nil {
		return "", nil, false
	}
	candidate := filepath.Join(rootReal, filepath.FromSlash(clean))
	real, err := filepath.EvalSymlinks(candidate)
	if err != nil {
		return "", nil, false
	}
	rel, err := filepath.Rel(rootReal, real)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", nil, false
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", nil, false
	}
	return real, fi, true
}

func (h *Handler) redirect(w http.ResponseWriter, r *http.Request, target string) {
	loc := (&url.URL{Path: target}).EscapedPath()
	if r.URL.RawQuery != "" {
		loc += "?" + r.URL.RawQuery
	}
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusMovedPermanently)
}

// notFound serves /index.html in SPA mode, else /404.html with status 404,
// else a plain 404.
func (h *Handler) notFound(w http.ResponseWriter, r *http.Request) {
	if h.SPA {
		if real, fi, ok := h.resolve("/index.html"); ok && fi.Mode().IsRegular() {
			h.serveFile(w, r, real, fi, "index.html")
			return
		}
	}
	hdr := w.Header()
	hdr.Del("Vary")
	var body []byte
	if real, fi, ok := h.resolve("/404.html"); ok && fi.Mode().IsRegular() {
		if b, err := os.ReadFile(real); err == nil {
			body = b
			hdr.Set("Content-Type", "text/html; charset=utf-8")
		}
	}
	if body == nil {
		body = []byte("404 page not found\n")
		hdr.Set("Content-Type", "text/plain; charset=utf-8")
	}
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusNotFound)
	if r.Method != http.MethodHead {
		w.Write(body) //nolint:errcheck
	}
}

func (h *Handler) serveFile(w http.ResponseWriter, r *http.Request, real string, fi os.FileInfo, name string) {
	tag, err := h.etag(real, fi)
	if err != nil {
		http.Error(w, "cannot read file", http.StatusInternalServerError)
		return
	}
	hdr := w.Header()
	ctype := mime.TypeByExtension(filepath.Ext(name))
	if ctype != "" {
		hdr.Set("Content-Type", ctype)
	}
	modtime := fi.ModTime()
	if modtime.Before(normalizedMtimeCutoff) {
		modtime = time.Time{} // no Last-Modified
	}

	if compressible(ctype) {
		hdr.Add("Vary", "Accept-Encoding")
		if acceptsGzip(r.Header.Get("Accept-Encoding")) && fi.Size() >= minGzipSize && fi.Size() <= maxGzipFileSize {
			if data := h.gzipped(real, tag); data != nil {
				hdr.Set("Content-Encoding", "gzip")
				hdr.Set("ETag", `"`+tag+`-gz"`)
				http.ServeContent(w, r, name, modtime, bytes.NewReader(data))
				return
			}
		}
	}

	f, err := os.Open(real)
	if err != nil {
		http.Error(w, "cannot read file", http.StatusInternalServerError)
		return
	}
	defer f.Close()
	hdr.Set("ETag", `"`+tag+`"`)
	http.ServeContent(w, r, name, modtime, f)
}

// etag returns a content hash of the file, cached while size and mtime are
// unchanged. Content hashes (not size+mtime) because image layers give every
// file the same mtime.
func (h *Handler) etag(real string, fi os.FileInfo) (string, error) {
	h.etagMu.Lock()
	e, ok := h.etags[real]
	h.etagMu.Unlock()
	if ok && e.size == fi.Size() && e.mtime.Equal(fi.ModTime()) {
		return e.tag, nil
	}
	f, err := os.Open(real)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, f); err != nil {
		return "", err
	}
	tag := hex.EncodeToString(sum.Sum(nil)[:16])
	h.etagMu.Lock()
	h.etags[real] = etagEntry{size: fi.Size(), mtime: fi.ModTime(), tag: tag}
	h.etagMu.Unlock()
	return tag, nil
}

// gzipped returns the gzip encoding of the file, or nil if it is not smaller.
func (h *Handler) gzipped(real, tag string) []byte {
	h.gzMu.Lock()
	e, ok := h.gz[real]
	h.gzMu.Unlock()
	if ok && e.tag == tag {
		return e.data
	}
	raw, err := os.ReadFile(real)
	if err != nil {
		return nil
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil
	}
	if _, err := zw.Write(raw); err != nil {
		return nil
	}
	if err := zw.Close(); err != nil {
		return nil
	}
	data := buf.Bytes()
	if len(data) >= len(raw) {
		data = nil
	}
	h.gzMu.Lock()
	defer h.gzMu.Unlock()
	if old, ok := h.gz[real]; ok {
		h.gzBytes -= len(old.data)
		delete(h.gz, real)
	}
	if h.gzBytes+len(data) <= maxGzipCacheBytes {
		h.gz[real] = gzEntry{tag: tag, data: data}
		h.gzBytes += len(data)
	}
	return data
}

// compressible reports whether a content type is worth gzipping.
func compressible(ctype string) bool {
	if ctype == "" {
		return false
	}
	mt, _, err := mime.ParseMediaType(ctype)
	if err != nil {
		return false
	}
	if strings.HasPrefix(mt, "text/") || strings.HasSuffix(mt, "+json") || strings.HasSuffix(mt, "+xml") {
		return true
	}
	switch mt {
	case "application/json", "application/xml", "application/javascript", "application/wasm",
		"image/svg+xml", "image/x-icon", "image/bmp", "font/ttf", "font/otf", "application/vnd.ms-fontobject":
		return true
	}
	return false
}

// acceptsGzip parses Accept-Encoding, honouring q=0.
func acceptsGzip(header string) bool {
	gzipQ, starQ := -1.0, -1.0
	for _, part := range strings.Split(header, ",") {
		fields := strings.Split(part, ";")
		coding := strings.ToLower(strings.TrimSpace(fields[0]))
		q := 1.0
		for _, p := range fields[1:] {
			k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
			if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					f = 0
				}
				q = f
			}
		}
		switch coding {
		case "gzip", "x-gzip":
			gzipQ = q
		case "*":
			starQ = q
		}
	}
	if gzipQ >= 0 {
		return gzipQ > 0
	}
	return starQ > 0
}
