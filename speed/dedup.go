package speed

import (
	"hash/maphash"
	"sync"
	"time"
)

// dedup remembers the ids seen within a window, capped at a number of ids. It keeps 64-bit
// hashes, not the ids: 2M ids take about 60 MB instead of several hundred. Two distinct ids
// collide with probability about n²/2⁶⁵ (1e-7 for a full window of 2M ids), which would drop
// one event from the speed view and from raw; the batch layer's exact tables would then miss
// it too, so the risk is stated in docs/architecture.md rather than hidden.
//
// It is sharded so that the consumer goroutines of several partitions rarely contend.
type dedup struct {
	seed   maphash.Seed
	window int64 // seconds
	shards [dedupShards]dedupShard
}

const dedupShards = 32

type dedupShard struct {
	mu   sync.Mutex
	m    map[uint64]uint32 // hash -> sequence of its ring entry
	ring []dedupEntry
	head int // oldest entry
	n    int
	seq  uint32 // wraps after 2³² ids, long after an entry left the ring
}

// dedupEntry is 16 bytes: a full window of 2M ids takes 32 MB of ring and about as much map.
type dedupEntry struct {
	h   uint64
	seq uint32
	at  uint32 // Unix seconds
}

func newDedup(window time.Duration, maxIDs int) *dedup {
	d := &dedup{seed: maphash.MakeSeed(), window: int64(window / time.Second)}
	per := max(1, maxIDs/dedupShards)
	for i := range d.shards {
		d.shards[i].ring = make([]dedupEntry, per)
		d.shards[i].m = make(map[uint64]uint32)
	}
	return d
}

// seen reports whether id was seen within the window and, if not, remembers it.
func (d *dedup) seen(id string, now time.Time) bool {
	h := maphash.String(d.seed, id)
	s := &d.shards[h%dedupShards]
	at := uint32(now.Unix())
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.n > 0 && int64(s.ring[s.head].at) < int64(at)-d.window {
		s.evict()
	}
	if _, ok := s.m[h]; ok {
		return true
	}
	if s.n == len(s.ring) {
		s.evict()
	}
	s.seq++
	s.ring[(s.head+s.n)%len(s.ring)] = dedupEntry{h: h, seq: s.seq, at: at}
	s.n++
	s.m[h] = s.seq
	return false
}

// forget removes ids remembered for rows that were dropped before they reached ClickHouse,
// so that the same records, consumed again, are not taken for duplicates.
func (d *dedup) forget(ids []string) {
	for _, id := range ids {
		h := maphash.String(d.seed, id)
		s := &d.shards[h%dedupShards]
		s.mu.Lock()
		delete(s.m, h)
		s.mu.Unlock()
	}
}

func (s *dedupShard) evict() {
	e := s.ring[s.head]
	if s.m[e.h] == e.seq {
		delete(s.m, e.h)
	}
	s.head = (s.head + 1) % len(s.ring)
	s.n--
}

// len returns the number of ids remembered.
func (d *dedup) len() int {
	n := 0
	for i := range d.shards {
		d.shards[i].mu.Lock()
		n += len(d.shards[i].m)
		d.shards[i].mu.Unlock()
	}
	return n
}
