package execdeps

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"path"
	"runtime"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
)

// elfSpec is an ELF64 x86-64 program or library for tests: a PT_INTERP
// and a dynamic section with its string table, and sizes a hostile file
// may claim in place of the real ones.
type elfSpec struct {
	interp          string
	needed          []string
	rpath, runpath  string
	interpSize      uint64 // the PT_INTERP's Filesz; 0: the real one
	dynstrSize      uint64 // the .dynstr section's size; 0: the real one
	dynstrPad       int    // bytes of zeros after the strings, in the file
	shoffPastTheEnd bool   // section headers past the end of the file
}

// build writes the file: header, program header, interp, dynstr, dynamic,
// shstrtab, section headers.
func (s elfSpec) build() []byte {
	le := binary.LittleEndian
	const ehsize, phsize, shsize = 64, 56, 64
	var data bytes.Buffer
	off := uint64(ehsize + phsize)
	interpOff := off
	data.WriteString(s.interp + "\x00")
	dynstrOff := interpOff + uint64(data.Len())
	var strs bytes.Buffer
	strs.WriteByte(0)
	var dyn []elf.Dyn64
	str := func(tag elf.DynTag, v string) {
		dyn = append(dyn, elf.Dyn64{Tag: int64(tag), Val: uint64(strs.Len())})
		strs.WriteString(v + "\x00")
	}
	for _, n := range s.needed {
		str(elf.DT_NEEDED, n)
	}
	if s.rpath != "" {
		str(elf.DT_RPATH, s.rpath)
	}
	if s.runpath != "" {
		str(elf.DT_RUNPATH, s.runpath)
	}
	dyn = append(dyn, elf.Dyn64{Tag: int64(elf.DT_NULL)})
	strs.Write(make([]byte, s.dynstrPad))
	data.Write(strs.Bytes())
	dynOff := interpOff + uint64(data.Len())
	binary.Write(&data, le, dyn)
	shstrOff := interpOff + uint64(data.Len())
	shstr := "\x00.dynstr\x00.dynamic\x00.shstrtab\x00"
	data.WriteString(shstr)
	shoff := interpOff + uint64(data.Len())
	if s.shoffPastTheEnd {
		shoff += 1 << 30
	}

	var b bytes.Buffer
	h := elf.Header64{Type: uint16(elf.ET_DYN), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Phoff: ehsize, Shoff: shoff, Ehsize: ehsize, Phentsize: phsize, Phnum: 1, Shentsize: shsize, Shnum: 4, Shstrndx: 3}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS], h.Ident[elf.EI_DATA], h.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	binary.Write(&b, le, h)
	interpSize := uint64(len(s.interp) + 1)
	if s.interpSize != 0 {
		interpSize = s.interpSize
	}
	binary.Write(&b, le, elf.Prog64{Type: uint32(elf.PT_INTERP), Flags: uint32(elf.PF_R), Off: interpOff, Filesz: interpSize, Memsz: interpSize, Align: 1})
	b.Write(data.Bytes())
	dynstrSize := uint64(strs.Len())
	if s.dynstrSize != 0 {
		dynstrSize = s.dynstrSize
	}
	for _, sh := range []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_STRTAB), Off: dynstrOff, Size: dynstrSize, Addralign: 1},
		{Name: 9, Type: uint32(elf.SHT_DYNAMIC), Off: dynOff, Size: uint64(len(dyn) * 16), Link: 1, Entsize: 16, Addralign: 8},
		{Name: 18, Type: uint32(elf.SHT_STRTAB), Off: shstrOff, Size: uint64(len(shstr)), Addralign: 1},
	} {
		binary.Write(&b, le, sh)
	}
	return b.Bytes()
}

func TestELFBuilder(t *testing.T) {
	info, ok := readELF(bytes.NewReader(elfSpec{interp: "/lib/ld.so", needed: []string{"liba.so", "libb.so"}, rpath: "/x:/y", runpath: "$ORIGIN"}.build()))
	if !ok || info.interp != "/lib/ld.so" || !slices.Equal(info.needed, []string{"liba.so", "libb.so"}) ||
		!slices.Equal(info.rpath, []string{"/x", "/y"}) || !slices.Equal(info.runpath, []string{"$ORIGIN"}) {
		t.Fatalf("readELF of the test's ELF file: %+v, %v", info, ok)
	}
}

// exe is an ELF program of the image, mode 0755.
func exe(s elfSpec) *fstest.MapFile { return &fstest.MapFile{Data: s.build(), Mode: 0o755} }

func symlink(target string) *fstest.MapFile {
	return &fstest.MapFile{Data: []byte(target), Mode: 0o777 | os.ModeSymlink}
}

// allocated runs f and returns the bytes it allocated.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestHostile runs searches in images made to mislead or exhaust them:
// each ends with the files a loader would read, or with what it found
// until one of its bounds, an error that says which, and little memory.
func TestHostile(t *testing.T) {
	ld := exe(elfSpec{})
	lib := exe(elfSpec{needed: []string{"libc.so.6"}})
	many := make([]string, 3000)
	for i := range many {
		many[i] = "libmissing" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676)) + ".so"
	}
	bigDirs := strings.Repeat("/nowhere:", 100000)
	for _, tc := range []struct {
		name    string
		fsys    fstest.MapFS
		want    []string
		wantErr error
	}{
		{
			name: "interpreter and libraries outside the root",
			fsys: fstest.MapFS{
				"app":              exe(elfSpec{interp: "/../../../lib/ld.so", needed: []string{"../../../../lib/libx.so", "liby.so"}, rpath: "/../../lib"}),
				"lib/ld.so":        ld,
				"lib/libx.so":      exe(elfSpec{}),
				"lib/liby.so":      exe(elfSpec{}),
				"lib/libc.so.6":    lib,
				"usr/lib/escape":   symlink("../../../../../lib"),
				"usr/lib/ld.so.ln": symlink("/../../lib/ld.so"),
			},
			// A relative DT_NEEDED with a slash is a path from the
			// working directory, "/": climbing above it stays there.
			want: []string{"/app", "/lib/ld.so", "/lib/libx.so", "/lib/liby.so"},
		},
		{
			name: "symlink loops everywhere",
			fsys: fstest.MapFS{
				"app":         exe(elfSpec{interp: "/lib/ld.so", needed: []string{"libloop.so", "libself.so"}}),
				"lib/ld.so":   symlink("ld.so"),
				"lib":         symlink("lib"),
				"libloop.so":  symlink("libloop2.so"),
				"libloop2.so": symlink("libloop.so"),
			},
			want: []string{"/app"},
		},
		{
			name: "libraries that need each other",
			fsys: fstest.MapFS{
				"app":         exe(elfSpec{interp: "/lib/ld.so", needed: []string{"liba.so"}}),
				"lib/ld.so":   ld,
				"lib/liba.so": exe(elfSpec{needed: []string{"libb.so", "liba.so"}}),
				"lib/libb.so": exe(elfSpec{needed: []string{"liba.so", "libb.so"}}),
			},
			want: []string{"/app", "/lib/ld.so", "/lib/liba.so", "/lib/libb.so"},
		},
		{
			name: "a string table that claims a terabyte",
			fsys: fstest.MapFS{
				"app":         exe(elfSpec{interp: "/lib/ld.so", needed: []string{"liba.so"}, dynstrSize: 1 << 40}),
				"lib/ld.so":   ld,
				"lib/liba.so": exe(elfSpec{}),
			},
			want: []string{"/app", "/lib/ld.so"},
		},
		{
			name: "an interpreter that claims a terabyte",
			fsys: fstest.MapFS{
				"app":       exe(elfSpec{interp: "/lib/ld.so", interpSize: 1 << 40}),
				"lib/ld.so": ld,
			},
			want: []string{"/app"},
		},
		{
			name: "section headers past the end",
			fsys: fstest.MapFS{
				"app":       exe(elfSpec{interp: "/lib/ld.so", shoffPastTheEnd: true}),
				"lib/ld.so": ld,
			},
			want: []string{"/app"},
		},
		{
			name: "a library whose string table is larger than a search reads of one file",
			fsys: fstest.MapFS{
				"app":           exe(elfSpec{interp: "/lib/ld.so", needed: []string{"libbig.so", "liba.so"}}),
				"lib/ld.so":     ld,
				"lib/libbig.so": exe(elfSpec{needed: []string{"liba.so"}, dynstrPad: maxELFRead + 1}),
				"lib/liba.so":   exe(elfSpec{}),
			},
			want: []string{"/app", "/lib/ld.so", "/lib/liba.so"},
		},
		{
			name: "thousands of libraries, none there",
			fsys: fstest.MapFS{
				"app":       exe(elfSpec{interp: "/lib/ld.so", needed: many}),
				"lib/ld.so": ld,
			},
			want:    []string{"/app", "/lib/ld.so"},
			wantErr: ErrBound,
		},
		{
			name: "an rpath of a hundred thousand directories",
			fsys: fstest.MapFS{
				"app":         exe(elfSpec{interp: "/lib/ld.so", needed: []string{"liba.so"}, rpath: bigDirs}),
				"lib/ld.so":   ld,
				"lib/liba.so": exe(elfSpec{}),
			},
			want:    []string{"/app", "/lib/ld.so"},
			wantErr: ErrBound,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			var err error
			n := allocated(func() { got, err = Files(tc.fsys, []string{"/app"}, Options{}) })
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("Files: error %v, want %v", err, tc.wantErr)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Files = %q, want %q", got, tc.want)
			}
			// The files are in the map already: what the search itself
			// allocates is bounded by what it reads of one ELF file
			// (debug/elf grows its buffer as it reads).
			if n > 4*maxELFRead {
				t.Errorf("Files allocated %d MB", n>>20)
			}
		})
	}
}

// FuzzReadELF parses what the fuzzer makes of ELF files: it never panics,
// and reads what a loader would accept only.
func FuzzReadELF(f *testing.F) {
	f.Add(elfSpec{interp: "/lib/ld.so", needed: []string{"liba.so"}, rpath: "$ORIGIN/x:/y"}.build())
	f.Add(elfSpec{interp: "/lib/ld.so", dynstrSize: 1 << 40}.build())
	if self, err := os.Executable(); err == nil {
		if b, err := os.ReadFile(self); err == nil {
			f.Add(b[:min(len(b), 64<<10)])
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		info, ok := readELF(bytes.NewReader(b))
		if ok && len(info.interp) > maxInterp {
			t.Fatalf("interp of %d bytes", len(info.interp))
		}
	})
}

// FuzzFiles searches an image whose program, loader and a library are
// what the fuzzer makes, and a symlink whose target it picks: every file
// found is a regular file of the image, named by a clean absolute path.
func FuzzFiles(f *testing.F) {
	f.Add(elfSpec{interp: "/lib/ld.so", needed: []string{"liba.so"}}.build(), []byte("#!/lib/ld.so x"), "../lib/liba.so")
	f.Add([]byte("#!/usr/bin/env -S A=1 ld.so"), elfSpec{needed: []string{"liba.so"}}.build(), "link")
	f.Fuzz(func(t *testing.T, prog, loader []byte, target string) {
		fsys := fstest.MapFS{
			"app":         {Data: prog, Mode: 0o755},
			"lib/ld.so":   {Data: loader, Mode: 0o755},
			"lib/liba.so": exe(elfSpec{needed: []string{"link"}}),
			"lib/link":    symlink(target),
			"usr/bin/env": exe(elfSpec{interp: "/lib/ld.so"}),
		}
		files, err := Files(fsys, []string{"/app"}, Options{Env: []string{"PATH=/lib:/usr/bin"}})
		if err != nil && !errors.Is(err, ErrBound) {
			t.Fatalf("Files: %v", err)
		}
		for _, p := range files {
			if !path.IsAbs(p) || path.Clean(p) != p {
				t.Errorf("%q is no clean absolute path", p)
			}
			if fi, err := fs.Stat(fsys, fsName(p)); err != nil || !fi.Mode().IsRegular() {
				t.Errorf("%q is no regular file of the image: %v", p, err)
			}
		}
	})
}
