// Package web serves Loom's browser console: the Connect-Web single page built from web/src by esbuild into
// web/dist (see package.json) and embedded in the binary. The page calls the services on the origin it is served
// from, so mount [Handler] on the same server as the RPCs (rpcserver.Config.Console).
package web

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed dist
var dist embed.FS

// asset is one embedded file, read once.
type asset struct {
	data        []byte
	contentType string
	etag        string
}

// Handler returns a handler that serves the embedded console: index.html at "/" (and "/index.html"), the other
// files of dist by name, and 404 for anything else. Every response carries `Cache-Control: no-cache` and a
// strong ETag (the files' names are not content-hashed, so clients must revalidate; a matching If-None-Match
// answers 304). index.html also carries a Content-Security-Policy that limits the page to its own origin, plus
// blob: media (the console plays synthesized speech from a blob URL). Only GET and HEAD are allowed. The handler
// is safe for concurrent use.
func Handler() http.Handler {
	assets, err := load(dist)
	if err != nil {
		// dist is compiled in: failing to read it is a build defect, not a runtime condition.
		panic(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
		if name == "" {
			name = "index.html"
		}
		a, ok := assets[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Type", a.contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("ETag", a.etag)
		h.Set("X-Content-Type-Options", "nosniff")
		if name == "index.html" {
			h.Set("Content-Security-Policy", "default-src 'self'; media-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'")
		}
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(a.data))
	})
}

// load reads every file under dist into memory, keyed by its path relative to dist.
func load(fsys fs.FS) (map[string]asset, error) {
	sub, err := fs.Sub(fsys, "dist")
	if err != nil {
		return nil, fmt.Errorf("web: open dist: %w", err)
	}
	assets := map[string]asset{}
	err = fs.WalkDir(sub, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(sub, p)
		if err != nil {
			return err
		}
		ct := mime.TypeByExtension(path.Ext(p))
		if ct == "" {
			ct = http.DetectContentType(data)
		}
		sum := sha256.Sum256(data)
		assets[p] = asset{data: data, contentType: ct, etag: `"` + hex.EncodeToString(sum[:16]) + `"`}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("web: read dist: %w", err)
	}
	if _, ok := assets["index.html"]; !ok {
		return nil, fmt.Errorf("web: dist has no index.html; run `npm run build` in web/")
	}
	return assets, nil
}
