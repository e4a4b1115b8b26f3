// Package webclient is the browser client served by im-gateway at "/": plain
// HTML, CSS and JavaScript that speaks only the public client API.
package webclient

import (
	"embed"
	"io/fs"
	"net/http"
)

// Files holds static/.
//
//go:embed static
var Files embed.FS

// Handler serves the client's files with no caching of index.html, so a new
// version is picked up on reload.
func Handler(root fs.FS) http.Handler {
	files := http.FileServer(http.FS(root))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" || r.URL.Path == "/index.html" {
			w.Header().Set("Cache-Control", "no-cache")
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'")
		files.ServeHTTP(w, r)
	})
}
