// Command images writes a container image as a docker-archive tarball without
// Docker: static binaries on an empty base, plus CA certificates and a passwd
// entry for the non-root user, with the Dockerfile's entrypoint, user and
// ports, so `docker build` and `make images` make images that behave the same.
//
//	images -tag gochat:dev -o bin/images/gochat.tar \
//	  -file bin/linux/gochat:/usr/local/bin/gochat \
//	  -entrypoint /usr/local/bin/gochat -port 8080 -port 9000
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// uid is distroless' "nonroot" user, which the Dockerfile also uses.
const uid = 65532

type fileFlags []string

func (f *fileFlags) String() string     { return strings.Join(*f, ",") }
func (f *fileFlags) Set(v string) error { *f = append(*f, v); return nil }

func main() {
	var (
		tag, out, entrypoint, caFile string
		files, ports                 fileFlags
	)
	flag.StringVar(&tag, "tag", "", "image reference to record in the tarball (e.g. ghcr.io/gochat/gochat:dev)")
	flag.StringVar(&out, "o", "", "output tarball")
	flag.Var(&files, "file", "SRC:DST, a file to put into the image (repeatable; executables keep mode 0755)")
	flag.StringVar(&entrypoint, "entrypoint", "", "the image's entrypoint")
	flag.Var(&ports, "port", "a TCP port the image exposes (repeatable)")
	flag.StringVar(&caFile, "ca-certificates", "/etc/ssl/certs/ca-certificates.crt", "CA bundle to install at /etc/ssl/certs/ca-certificates.crt")
	flag.Parse()
	if err := run(tag, out, entrypoint, caFile, files, ports); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(tag, out, entrypoint, caFile string, files, ports []string) error {
	if tag == "" || out == "" || entrypoint == "" || len(files) == 0 {
		return errors.New("-tag, -o, -entrypoint and at least one -file are required")
	}
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("-tag %q: %w", tag, err)
	}
	layer, err := buildLayer(files, caFile)
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cfg.Config.Entrypoint = []string{entrypoint}
	cfg.Config.User = fmt.Sprintf("%d:%d", uid, uid)
	cfg.Config.WorkingDir = "/"
	cfg.Config.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
	}
	if len(ports) > 0 {
		cfg.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range ports {
			if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
				return fmt.Errorf("-port %q: want a number from 1 to 65535", p)
			}
			cfg.Config.ExposedPorts[p+"/tcp"] = struct{}{}
		}
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return fmt.Errorf("set config: %w", err)
	}
	if err := os.MkdirAll(path.Dir(out), 0o755); err != nil {
		return fmt.Errorf("create output dir: %w", err)
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(tmp, out)
}

// buildLayer makes the single layer: the given files, the CA bundle, a
// passwd/group naming the non-root user, and a world-writable /tmp. Times
// are zero so the same inputs give the same layer digest.
func buildLayer(files []string, caFile string) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	addDirs := func(p string) error {
		var parts []string
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			parts = append([]string{d}, parts...)
		}
		for _, d := range parts {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
				return err
			}
		}
		return nil
	}
	add := func(dst string, mode int64, data []byte) error {
		if err := addDirs(dst); err != nil {
			return fmt.Errorf("add %s: %w", dst, err)
		}
		h := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(dst, "/"), Mode: mode, Size: int64(len(data)), ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("add %s: %w", dst, err)
		}
		if _, err := tw.Write(data); err != nil {
			return fmt.Errorf("add %s: %w", dst, err)
		}
		return nil
	}
	for _, f := range files {
		src, dst, ok := strings.Cut(f, ":")
		if !ok || !path.IsAbs(dst) {
			return nil, fmt.Errorf("-file %q: want SRC:/absolute/DST", f)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			return nil, fmt.Errorf("-file %q: %w", f, err)
		}
		if err := add(dst, 0o755, data); err != nil {
			return nil, err
		}
	}
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA certificates (install Debian's ca-certificates or pass -ca-certificates): %w", err)
	}
	if err := add("/etc/ssl/certs/ca-certificates.crt", 0o644, ca); err != nil {
		return nil, err
	}
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", uid, uid)
	if err := add("/etc/passwd", 0o644, []byte(passwd)); err != nil {
		return nil, err
	}
	if err := add("/etc/group", 0o644, []byte(fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", uid))); err != nil {
		return nil, err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777, ModTime: time.Unix(0, 0)}); err != nil {
		return nil, fmt.Errorf("add /tmp: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer: %w", err)
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
}
