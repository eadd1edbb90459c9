// Package execdeps finds, in an image it never runs, the files that
// starting a program reads before the program's own code runs: the
// program; the interpreters of a #! script, through env(1) too; the ELF
// program's loader, and the shared libraries it needs, found as the
// image's own loader would find them (DT_RPATH, LD_LIBRARY_PATH,
// DT_RUNPATH, /etc/ld.so.cache, the default directories; musl's path
// file). A converter lays these out first and a boot prefetches them, as
// it does a recorded access profile.
//
// It reads the image through an fs.FS, following symlinks itself (an
// fs.ReadLinkFS) within the image's root, and returns the files' paths in
// the image, absolute and free of symlinks.
package execdeps

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// Options give what else than the command the start depends on.
type Options struct {
	// Env is the image's environment, NAME=VALUE: its PATH finds the
	// command, LD_LIBRARY_PATH and LD_PRELOAD steer the loader.
	Env []string
	// WorkDir is where a relative path is taken from; empty: "/".
	WorkDir string
}

// Bounds on what a hostile image can make the search do.
const (
	maxLinks   = 40   // symlinks followed in one path, as Linux's ELOOP
	maxScripts = 4    // #! interpreters in a chain, as Linux's binfmt recursion
	maxLibs    = 1024 // libraries loaded
	maxInMem   = 64 << 20
	scriptHead = 256 // what Linux reads of a script for its #! line
	// maxLookups bounds the paths one search resolves: gdb's start
	// (its 57 libraries) takes 64.
	maxLookups = 20000
	// maxELFRead bounds what is read of one ELF file: its headers,
	// dynamic section and string table (python3.11: 120 KB of 6.8 MB;
	// Rust's libLLVM.so: 1.3 MB of 200 MB); maxRead, what is read of all.
	maxELFRead = 16 << 20
	maxRead    = 256 << 20
)

// ErrBound is returned, with the files found until then, by a search
// that stopped at one of its bounds.
var ErrBound = errors.New("execdeps: the search stopped at its bound")

// defaultPath is the PATH a container without one gets (docker's and runc's).
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Files returns the files that exec(argv) in the image reads before the
// program's code runs, in the order they are first read. argv[0] is found
// on the image's PATH when it has no slash. A start through a shell
// (sh -c 'CMD ...', as a Dockerfile's shell form gives) counts CMD's files
// too when its first word is a plain command. A file that is missing or
// unreadable leaves out what it would have brought; an error means the
// command itself was not found.
func Files(fsys fs.FS, argv []string, o Options) ([]string, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("execdeps: no command")
	}
	r := &resolver{img: &image{fsys: fsys}, env: map[string]string{}, workDir: o.WorkDir, seen: map[string]bool{}}
	if r.workDir == "" || !path.IsAbs(r.workDir) {
		r.workDir = "/"
	}
	r.img.rl, _ = fsys.(fs.ReadLinkFS)
	for _, kv := range o.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			r.env[k] = v
		}
	}
	p, err := r.lookPath(argv[0])
	if err != nil {
		return nil, err
	}
	r.exec(p, 0)
	if word := shellCommand(argv); word != "" {
		if p, err := r.lookPath(word); err == nil {
			r.exec(p, 0)
		}
	}
	if r.img.bound != "" {
		return r.files, fmt.Errorf("%w: %s", ErrBound, r.img.bound)
	}
	return r.files, nil
}

type resolver struct {
	img     *image
	env     map[string]string
	workDir string

	files []string
	seen  map[string]bool

	cache     ldCache // nil until the loader reads it
	cacheRead bool
}

// add records a file read, once.
func (r *resolver) add(p string) {
	if !r.seen[p] {
		r.seen[p] = true
		r.files = append(r.files, p)
	}
}

// lookPath finds a command as execvp does: a name with a slash is a path,
// any other is looked for in PATH's directories, the first regular file
// with an execute bit.
func (r *resolver) lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		p, fi, err := r.img.resolve(r.abs(name))
		if err != nil {
			return "", fmt.Errorf("execdeps: %s: %w", name, err)
		}
		if !fi.Mode().IsRegular() {
			return "", fmt.Errorf("execdeps: %s is not a regular file", name)
		}
		return p, nil
	}
	dirs, ok := r.env["PATH"]
	if !ok {
		dirs = defaultPath
	}
	for _, dir := range strings.Split(dirs, ":") {
		if dir == "" {
			dir = "."
		}
		p, fi, err := r.img.resolve(r.abs(path.Join(dir, name)))
		if err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("execdeps: %s not found in PATH %s", name, dirs)
}

func (r *resolver) abs(p string) string {
	if path.IsAbs(p) {
		return path.Clean(p)
	}
	return path.Join(r.workDir, p)
}

// exec follows what the kernel does to exec the regular file at p (a
// path free of symlinks): a script's interpreter, an ELF program's loader.
func (r *resolver) exec(p string, depth int) {
	f, err := r.img.open(p)
	if err != nil {
		return
	}
	defer f.Close()
	r.add(p)
	head := make([]byte, scriptHead)
	n, _ := f.ReadAt(head, 0)
	head = head[:n]
	if bytes.HasPrefix(head, []byte("#!")) {
		if depth >= maxScripts {
			return
		}
		interp, arg := shebang(head)
		if interp == "" {
			return
		}
		if path.Base(interp) == "env" {
			ip, _, err := r.img.resolve(r.abs(interp))
			if err != nil {
				return
			}
			r.exec(ip, depth+1)
			if cmd := envCommand(arg); cmd != "" {
				if cp, err := r.lookPath(cmd); err == nil {
					r.exec(cp, depth+1)
				}
			}
			return
		}
		if ip, fi, err := r.img.resolve(r.abs(interp)); err == nil && fi.Mode().IsRegular() {
			r.exec(ip, depth+1)
		}
		return
	}
	if info, ok := r.img.readELF(f); ok && info.interp != "" {
		r.load(p, info)
	}
}

// shebang parses a #! line as Linux does: the interpreter is the first
// word, and the rest of the line, trimmed, is its one argument.
func shebang(head []byte) (interp, arg string) {
	line := head[2:]
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	}
	s := strings.Trim(string(line), " \t\r")
	interp, arg, _ = strings.Cut(s, " ")
	if i := strings.IndexByte(interp, '\t'); i >= 0 {
		interp, arg = interp[:i], interp[i+1:]+" "+arg
	}
	return interp, strings.Trim(arg, " \t")
}

// envCommand is the command that env(1) runs given arg, a #! line's
// argument: the first word that is no option and no NAME=VALUE (env -S
// splits the line into words; without -S it is one word).
func envCommand(arg string) string {
	for _, w := range strings.Fields(arg) {
		switch {
		case strings.HasPrefix(w, "-"), strings.Contains(w, "="):
			continue
		}
		return w
	}
	return ""
}

// shells run a command given with -c.
var shells = map[string]bool{"sh": true, "bash": true, "dash": true, "ash": true, "zsh": true, "ksh": true}

// shellCommand is the command that `sh -c SCRIPT` runs first when SCRIPT
// starts with a plain word (past `exec` and NAME=VALUE words), else "".
func shellCommand(argv []string) string {
	if len(argv) < 3 || !shells[path.Base(argv[0])] || argv[1] != "-c" {
		return ""
	}
	for _, w := range strings.Fields(argv[2]) {
		switch {
		case w == "exec":
			continue
		case strings.ContainsAny(w, "$`'\"\\;&|<>(){}*?[]~#"):
			return ""
		case strings.Contains(w, "="):
			continue
		}
		return w
	}
	return ""
}

// load follows the loader of the ELF program at p: the loader itself, the
// libraries LD_PRELOAD names, and those the program needs and they need,
// breadth first, each found once.
func (r *resolver) load(p string, exe elfInfo) {
	ld, fi, err := r.img.resolve(r.abs(exe.interp))
	if err != nil || !fi.Mode().IsRegular() {
		return
	}
	r.add(ld)
	musl := strings.HasPrefix(path.Base(ld), "ld-musl-")
	type obj struct {
		path string
		info elfInfo
	}
	prog := obj{p, exe}
	loaded := map[string]bool{}
	var queue []obj
	need := func(name string, from obj) {
		if loaded[name] {
			return
		}
		if len(loaded) >= maxLibs {
			r.img.stop(fmt.Sprintf("more than %d libraries", maxLibs))
			return
		}
		loaded[name] = true
		lib, info, ok := r.find(name, from.path, from.info, prog.info, musl, ld)
		if !ok || r.seen[lib] {
			return
		}
		r.add(lib)
		queue = append(queue, obj{lib, info})
	}
	for _, name := range strings.FieldsFunc(r.env["LD_PRELOAD"], func(c rune) bool { return c == ' ' || c == ':' }) {
		need(name, prog)
	}
	for _, name := range exe.needed {
		need(name, prog)
	}
	for len(queue) > 0 {
		o := queue[0]
		queue = queue[1:]
		for _, name := range o.info.needed {
			need(name, o)
		}
	}
}

// find looks for library name, needed by the object at from (its ELF
// info fromInfo), as the loader would: a path if it has a slash; else the
// object's DT_RPATH and the program's (unless the object has DT_RUNPATH),
// LD_LIBRARY_PATH, the object's DT_RUNPATH, the loader's cache (glibc) or
// path file (musl), and the default directories; the first file that is
// an ELF library of the program's class and machine.
func (r *resolver) find(name, from string, fromInfo, prog elfInfo, musl bool, ld string) (string, elfInfo, bool) {
	try := func(p string) (string, elfInfo, bool) {
		c, fi, err := r.img.resolve(r.abs(p))
		if err != nil || !fi.Mode().IsRegular() {
			return "", elfInfo{}, false
		}
		f, err := r.img.open(c)
		if err != nil {
			return "", elfInfo{}, false
		}
		defer f.Close()
		info, ok := r.img.readELF(f)
		if !ok || !prog.compatible(info) {
			return "", elfInfo{}, false
		}
		return c, info, true
	}
	if strings.Contains(name, "/") {
		return try(name)
	}
	origin := path.Dir(from)
	var dirs []string
	if len(fromInfo.runpath) == 0 {
		dirs = append(dirs, expand(fromInfo.rpath, origin)...)
		if len(prog.runpath) == 0 {
			dirs = append(dirs, prog.rpath...)
		}
	}
	dirs = append(dirs, strings.Split(r.env["LD_LIBRARY_PATH"], ":")...)
	dirs = append(dirs, expand(fromInfo.runpath, origin)...)
	for _, d := range dirs {
		if d == "" {
			continue
		}
		if p, info, ok := try(path.Join(d, name)); ok {
			return p, info, true
		}
	}
	if musl {
		dirs = r.muslPath(ld)
	} else {
		for _, p := range r.ldCache().lookup(name) {
			if p, info, ok := try(p); ok {
				return p, info, true
			}
		}
		dirs = nil
		if t := prog.multiarch(); t != "" {
			dirs = append(dirs, "/lib/"+t, "/usr/lib/"+t)
		}
		dirs = append(dirs, "/lib64", "/usr/lib64", "/lib", "/usr/lib")
	}
	for _, d := range dirs {
		if p, info, ok := try(path.Join(d, name)); ok {
			return p, info, true
		}
	}
	return "", elfInfo{}, false
}

// expand replaces $ORIGIN in DT_RPATH or DT_RUNPATH entries; an entry
// with another token ($LIB, $PLATFORM), which depends on the loader's
// build and the CPU, is left out.
func expand(dirs []string, origin string) []string {
	var out []string
	for _, d := range dirs {
		d = strings.ReplaceAll(strings.ReplaceAll(d, "${ORIGIN}", origin), "$ORIGIN", origin)
		if !strings.Contains(d, "$") {
			out = append(out, d)
		}
	}
	return out
}

// ldCache is the image's /etc/ld.so.cache, read once; reading it counts
// it as a file the start reads, as the loader maps it.
func (r *resolver) ldCache() ldCache {
	if !r.cacheRead {
		r.cacheRead = true
		if p, b, err := r.img.readFile("/etc/ld.so.cache"); err == nil {
			if c, err := parseLDCache(b); err == nil {
				r.cache = c
				r.add(p)
			}
		}
	}
	return r.cache
}

// muslPath is the directories musl's loader ld searches: its path file,
// /etc/ld-musl-ARCH.path (newline or colon separated), else its default.
func (r *resolver) muslPath(ld string) []string {
	arch := strings.TrimSuffix(strings.TrimPrefix(path.Base(ld), "ld-musl-"), ".so.1")
	if p, b, err := r.img.readFile("/etc/ld-musl-" + arch + ".path"); err == nil {
		r.add(p)
		return strings.FieldsFunc(string(b), func(c rune) bool { return c == '\n' || c == ':' })
	}
	return []string{"/lib", "/usr/local/lib", "/usr/lib"}
}

// image reads an image's files by absolute path, following symlinks
// within it, and keeps the account of the search's bounds.
type image struct {
	fsys fs.FS
	rl   fs.ReadLinkFS // nil: the FS shows no symlinks

	lookups int
	read    int64  // bytes read of ELF files and configuration
	bound   string // the bound the search stopped at; "": none
}

// stop ends the search: every later lookup fails.
func (im *image) stop(why string) {
	if im.bound == "" {
		im.bound = why
	}
}

// readELF parses the ELF file f, reading at most what is left of the
// search's bounds.
func (im *image) readELF(f io.ReaderAt) (elfInfo, bool) {
	b := &boundedReader{r: f, left: min(maxELFRead, maxRead-im.read)}
	info, ok := readELF(b)
	im.read += b.used
	if b.hit {
		if im.read >= maxRead {
			im.stop(fmt.Sprintf("more than %d bytes read", maxRead))
		}
		return elfInfo{}, false
	}
	return info, ok
}

// boundedReader reads r until left bytes have been read, then fails.
type boundedReader struct {
	r    io.ReaderAt
	left int64
	used int64
	hit  bool
}

func (b *boundedReader) ReadAt(p []byte, off int64) (int, error) {
	if int64(len(p)) > b.left-b.used {
		b.hit = true
		return 0, errors.New("execdeps: read bound reached")
	}
	n, err := b.r.ReadAt(p, off)
	b.used += int64(n)
	return n, err
}

func fsName(p string) string {
	if p == "/" {
		return "."
	}
	return strings.TrimPrefix(p, "/")
}

func (im *image) lstat(p string) (fs.FileInfo, error) {
	if im.rl != nil {
		return im.rl.Lstat(fsName(p))
	}
	return fs.Stat(im.fsys, fsName(p))
}

// resolve returns the path of p with every symlink followed (an absolute
// target from the image's root: the image is the root; ".." at the root
// stays there), and what it is.
func (im *image) resolve(p string) (string, fs.FileInfo, error) {
	if im.bound != "" {
		return "", nil, ErrBound
	}
	if im.lookups++; im.lookups > maxLookups {
		im.stop(fmt.Sprintf("more than %d paths looked up", maxLookups))
		return "", nil, ErrBound
	}
	cur, rest, links := "/", strings.Split(p, "/"), 0
	for len(rest) > 0 {
		name := rest[0]
		rest = rest[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, name)
		fi, err := im.lstat(next)
		if err != nil {
			return "", nil, err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			if links++; links > maxLinks {
				return "", nil, fmt.Errorf("%s: too many symlinks", p)
			}
			target, err := im.rl.ReadLink(fsName(next))
			if err != nil {
				return "", nil, err
			}
			if path.IsAbs(target) {
				cur = "/"
			}
			rest = append(strings.Split(target, "/"), rest...)
			continue
		}
		if len(rest) > 0 && !fi.IsDir() {
			return "", nil, fmt.Errorf("%s: %s is not a directory", p, next)
		}
		cur = next
	}
	fi, err := fs.Stat(im.fsys, fsName(cur))
	return cur, fi, err
}

// file is an open regular file of the image.
type file interface {
	io.ReaderAt
	io.Closer
}

// open opens the regular file at p, a path free of symlinks, for ReadAt:
// as it is if the FS's files can, else read into memory up to maxInMem.
func (im *image) open(p string) (file, error) {
	f, err := im.fsys.Open(fsName(p))
	if err != nil {
		return nil, err
	}
	if ra, ok := f.(file); ok {
		return ra, nil
	}
	defer f.Close()
	limit := min(maxInMem, maxRead-im.read)
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	im.read += int64(len(b))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		if im.read >= maxRead {
			im.stop(fmt.Sprintf("more than %d bytes read", maxRead))
		}
		return nil, fmt.Errorf("%s: larger than %d bytes", p, maxInMem)
	}
	return nopCloser{bytes.NewReader(b)}, nil
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// readFile resolves p and reads the regular file there, up to maxInMem.
func (im *image) readFile(p string) (string, []byte, error) {
	c, fi, err := im.resolve(p)
	if err != nil {
		return "", nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > maxInMem {
		return "", nil, fmt.Errorf("%s: not a regular file of at most %d bytes", p, maxInMem)
	}
	f, err := im.fsys.Open(fsName(c))
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxInMem+1))
	im.read += int64(len(b))
	if err == nil && len(b) > maxInMem {
		err = fmt.Errorf("%s: larger than %d bytes", p, maxInMem)
	}
	return c, b, err
}
