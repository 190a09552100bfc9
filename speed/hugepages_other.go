//go:build !linux

package speed

// allocEntries returns n dedup entries from the heap (huge pages are asked for on Linux).
func allocEntries(n int) (entries []dedupEntry, offHeap int, free func()) {
	return make([]dedupEntry, n), 0, func() {}
}
