//go:build linux

package speed

import (
	"syscall"
	"unsafe"
)

// allocEntries returns n dedup entries in memory of their own, outside the Go heap, which
// the kernel is asked to back with 2 MiB pages (MADV_HUGEPAGE: transparent huge pages in
// "madvise" mode, Debian's default). A probe into a table of 64 MB at a random place costs a
// TLB miss, and in a VM a nested page walk, per id with 4 KiB pages: the dedup window was a
// fifth of the speed process's CPU before (BENCHMARKS.md). free unmaps it. Small tables, and
// a failed mmap, come from the heap.
func allocEntries(n int) (entries []dedupEntry, offHeap int, free func()) {
	const huge = 2 << 20
	size := n * int(unsafe.Sizeof(dedupEntry{}))
	if size < huge {
		return make([]dedupEntry, n), 0, func() {}
	}
	b, err := syscall.Mmap(-1, 0, size+huge, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return make([]dedupEntry, n), 0, func() {}
	}
	off := (huge - int(uintptr(unsafe.Pointer(unsafe.SliceData(b)))%huge)) % huge
	_ = syscall.Madvise(b[off:off+size], syscall.MADV_HUGEPAGE) // advice: without it, 4 KiB pages
	entries = unsafe.Slice((*dedupEntry)(unsafe.Pointer(&b[off])), n)
	return entries, len(b), func() { _ = syscall.Munmap(b) }
}
