package execdeps

import (
	"bytes"
	"debug/elf"
	"io"
	"strings"
)

// elfInfo is what the loader reads of an ELF file to load it and what it
// needs.
type elfInfo struct {
	class   elf.Class
	machine elf.Machine
	interp  string   // PT_INTERP: the loader; empty for a static program
	needed  []string // DT_NEEDED, in order
	rpath   []string // DT_RPATH, searched before LD_LIBRARY_PATH
	runpath []string // DT_RUNPATH, searched after it
}

// maxInterp bounds PT_INTERP; Linux refuses one longer than a page.
const maxInterp = 4096

// readELF parses the ELF file r; ok is false for a file that is no ELF
// file or one debug/elf cannot read.
func readELF(r io.ReaderAt) (info elfInfo, ok bool) {
	f, err := elf.NewFile(r)
	if err != nil {
		return info, false
	}
	defer f.Close()
	info.class, info.machine = f.Class, f.Machine
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP || p.Filesz == 0 || p.Filesz > maxInterp {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			return info, false
		}
		info.interp = string(bytes.TrimRight(b, "\x00"))
		break
	}
	// A static program has no dynamic section: it needs nothing. Each
	// DynString reads the section and its strings again: once is enough to
	// fail.
	if info.needed, err = f.DynString(elf.DT_NEEDED); err != nil {
		return info, true
	}
	info.rpath = dynPaths(f, elf.DT_RPATH)
	info.runpath = dynPaths(f, elf.DT_RUNPATH)
	return info, true
}

func dynPaths(f *elf.File, tag elf.DynTag) []string {
	vals, _ := f.DynString(tag)
	var out []string
	for _, v := range vals {
		out = append(out, strings.Split(v, ":")...)
	}
	return out
}

// compatible reports whether the loader of a program like info would load
// the library lib: the same class and machine.
func (info elfInfo) compatible(lib elfInfo) bool {
	return info.class == lib.class && info.machine == lib.machine
}

// multiarch is Debian's name of a machine's library directory
// (/usr/lib/x86_64-linux-gnu), where its loader looks by default.
func (info elfInfo) multiarch() string {
	switch {
	case info.machine == elf.EM_X86_64 && info.class == elf.ELFCLASS64:
		return "x86_64-linux-gnu"
	case info.machine == elf.EM_386:
		return "i386-linux-gnu"
	case info.machine == elf.EM_AARCH64:
		return "aarch64-linux-gnu"
	case info.machine == elf.EM_ARM:
		return "arm-linux-gnueabihf"
	case info.machine == elf.EM_RISCV:
		return "riscv64-linux-gnu"
	case info.machine == elf.EM_PPC64:
		return "powerpc64le-linux-gnu"
	case info.machine == elf.EM_S390:
		return "s390x-linux-gnu"
	}
	return ""
}
