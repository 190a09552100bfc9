package speed

import (
	"hash/maphash"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/lambda-platform/lambda/shared/rawbatch"
)

// dedup remembers the ids seen within a window, capped at a number of ids. It keeps 64-bit
// hashes, not the ids: 2M ids take 64 MB instead of several hundred. Two distinct ids
// collide with probability about n²/2⁶⁵ (1e-7 for a full window of 2M ids), which would drop
// one event from the speed view and from raw; the batch layer's exact tables would then miss
// it too, so the risk is stated in docs/architecture.md rather than hidden.
//
// It is sharded so that the consumer goroutines of several partitions rarely contend. An id
// is remembered while it is among the last maxIDs/shards ids first seen in its shard and was
// first seen within the window. Each shard is one open-addressing hash table (linear probing)
// of entries that carry their hash, their sequence number in the shard and the second they
// were seen: whether an entry still counts is computed, not kept up to date, so an id costs
// one probe sequence (at a full window, the one random memory access of the event) and
// nothing else. Entries that stopped counting are swept out, by one sequential pass over the
// table, when it is 65% full. The table is allocated at its full size up front and holds no
// pointers: nothing for the garbage collector to scan.
type dedup struct {
	seed   maphash.Seed
	window int64 // seconds
	shards [dedupShards]dedupShard
	// offHeap is the size of the memory the tables take outside the Go heap (allocEntries).
	offHeap int
}

const dedupShards = 32

type dedupShard struct {
	mu      sync.Mutex
	entries []dedupEntry // h == 0: empty
	used    int          // entries that are not empty, counting or not
	sweepAt int
	seq     uint32 // of the last id remembered
	keep    uint32 // ids of the shard that count: maxIDs/shards
	// sink keeps seenBatch's touches of the table from being optimised away.
	sink uint64
}

// dedupEntry is 16 bytes: a table of twice the shard's ids takes 64 MB for 2M ids.
type dedupEntry struct {
	h   uint64
	seq uint32
	at  uint32 // Unix seconds
}

func newDedup(window time.Duration, maxIDs int) *dedup {
	d := &dedup{seed: maphash.MakeSeed(), window: int64(window / time.Second)}
	per := max(1, maxIDs/dedupShards)
	size := 2*per + 1
	all, offHeap, free := allocEntries(dedupShards * size)
	d.offHeap = offHeap
	for i := range d.shards {
		s := &d.shards[i]
		s.entries = all[i*size : (i+1)*size : (i+1)*size]
		s.sweepAt = size * 65 / 100
		s.keep = uint32(per)
	}
	// The tables may live outside the heap: unmapped once the window is unreachable.
	runtime.AddCleanup(d, func(free func()) { free() }, free)
	return d
}

// hash is an id's key: never 0, the empty entry.
func (d *dedup) hash(id string) uint64 { return nonZero(maphash.String(d.seed, id)) }

func (d *dedup) hashBytes(id []byte) uint64 { return nonZero(maphash.Bytes(d.seed, id)) }

func nonZero(h uint64) uint64 {
	if h == 0 {
		return 1
	}
	return h
}

func (d *dedup) shard(h uint64) *dedupShard { return &d.shards[h%dedupShards] }

// seen reports whether id was seen within the window and, if not, remembers it.
func (d *dedup) seen(id string, now time.Time) bool {
	return d.seenHash(d.hash(id), now.Unix())
}

// seenHash is seen for an id's hash at now (Unix seconds).
func (d *dedup) seenHash(h uint64, now int64) bool {
	s := d.shard(h)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seenLocked(h, now, d.window)
}

// seenLocked is seenHash in the locked shard s.
func (s *dedupShard) seenLocked(h uint64, now, window int64) bool {
	i, found := s.find(h)
	if found {
		e := &s.entries[i]
		if s.counts(e, now, window) {
			return true
		}
		// Seen before the window or the cap: remembered anew, in place.
		s.seq++
		e.seq, e.at = s.seq, uint32(now)
		return false
	}
	if s.used >= s.sweepAt {
		s.sweep(now, window)
		i, _ = s.find(h)
	}
	s.seq++
	s.entries[i] = dedupEntry{h: h, seq: s.seq, at: uint32(now)}
	s.used++
	return false
}

// seenBatch is seenHash for every hash of hs at now, as if they came one after another: dup[i]
// says whether hs[i] was seen (dup must be at least as long as hs). It returns how many were.
//
// The ids are taken shard by shard, in their order within the shard (all that order changes:
// a shard's answers depend on its own ids only), under one lock per shard; each shard's ids
// first touch the entries their probes start at, loads that do not wait for one another, so
// that their cache misses overlap instead of costing one after another. order is scratch
// space of the caller's, returned for reuse.
func (d *dedup) seenBatch(hs []uint64, now int64, dup []bool, order []int32) (int, []int32) {
	var start [dedupShards + 1]int32
	for _, h := range hs {
		start[h%dedupShards+1]++
	}
	for i := 1; i <= dedupShards; i++ {
		start[i] += start[i-1]
	}
	order = slices.Grow(order[:0], len(hs))[:len(hs)]
	next := start
	for i, h := range hs {
		k := h % dedupShards
		order[next[k]] = int32(i)
		next[k]++
	}
	n := 0
	for k := range dedupShards {
		ids := order[start[k]:start[k+1]]
		if len(ids) == 0 {
			continue
		}
		s := &d.shards[k]
		s.mu.Lock()
		var sink uint64
		for _, i := range ids {
			sink += s.entries[s.home(hs[i])].h
		}
		s.sink = sink
		for _, i := range ids {
			dup[i] = s.seenLocked(hs[i], now, d.window)
			if dup[i] {
				n++
			}
		}
		s.mu.Unlock()
	}
	return n, order
}

// counts says whether an entry is among the shard's last keep ids and within the window.
func (s *dedupShard) counts(e *dedupEntry, now, window int64) bool {
	return s.seq-e.seq < s.keep && int64(e.at) >= now-window
}

// forget removes the ids of rows that were dropped before they reached ClickHouse, so that
// the same records, consumed again, are not taken for duplicates.
func (d *dedup) forget(c *rawbatch.Columns) {
	for i := range c.Len() {
		d.forgetHash(d.hashBytes(c.IDBytes(i)))
	}
}

func (d *dedup) forgetHash(h uint64) {
	s := d.shard(h)
	s.mu.Lock()
	if i, found := s.find(h); found {
		s.remove(i)
	}
	s.mu.Unlock()
}

// home is the entry a key's probe sequence starts at (the hash's high half scaled to the
// table: the low bits chose the shard).
func (s *dedupShard) home(h uint64) int {
	return int((h >> 32) * uint64(len(s.entries)) >> 32)
}

// find returns the entry holding h, or the empty one where it would go.
func (s *dedupShard) find(h uint64) (int, bool) {
	i := s.home(h)
	for {
		switch s.entries[i].h {
		case h:
			return i, true
		case 0:
			return i, false
		}
		if i++; i == len(s.entries) {
			i = 0
		}
	}
}

// remove empties entry i, shifting back the entries after it that would no longer be found.
func (s *dedupShard) remove(i int) {
	n := len(s.entries)
	j := i
	for {
		if j++; j == n {
			j = 0
		}
		k := s.entries[j].h
		if k == 0 {
			break
		}
		// The entry stays when its home lies cyclically in (i, j].
		h := s.home(k)
		if (i <= j && i < h && h <= j) || (i > j && (h > i || h <= j)) {
			continue
		}
		s.entries[i] = s.entries[j]
		i = j
	}
	s.entries[i] = dedupEntry{}
	s.used--
}

// sweep removes the entries that no longer count, in one pass over the table. Removing one
// shifts later entries back into its place, so that place is looked at again.
func (s *dedupShard) sweep(now, window int64) {
	for i := 0; i < len(s.entries); {
		if e := &s.entries[i]; e.h != 0 && !s.counts(e, now, window) {
			s.remove(i)
			continue
		}
		i++
	}
}

// len returns the number of entries held, some of which may no longer count until the next
// sweep (at most 65% of twice dedup_max_ids).
func (d *dedup) len() int {
	n := 0
	for i := range d.shards {
		d.shards[i].mu.Lock()
		n += d.shards[i].used
		d.shards[i].mu.Unlock()
	}
	return n
}

// counting returns the number of ids that count at now (a scan of every table: tests).
func (d *dedup) counting(now int64) int {
	n := 0
	for i := range d.shards {
		s := &d.shards[i]
		s.mu.Lock()
		for j := range s.entries {
			if e := &s.entries[j]; e.h != 0 && s.counts(e, now, d.window) {
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}
