package speed

import (
	"hash/maphash"
	"sync"
	"time"

	"github.com/lambda-platform/lambda/shared/rawbatch"
)

// dedup remembers the ids seen within a window, capped at a number of ids. It keeps 64-bit
// hashes, not the ids: 2M ids take about 60 MB instead of several hundred. Two distinct ids
// collide with probability about n²/2⁶⁵ (1e-7 for a full window of 2M ids), which would drop
// one event from the speed view and from raw; the batch layer's exact tables would then miss
// it too, so the risk is stated in docs/architecture.md rather than hidden.
//
// It is sharded so that the consumer goroutines of several partitions rarely contend. Each
// shard is a ring of the ids in the order they were first seen (evicted from its head when
// they leave the window, or when the ring is full) and an open-addressing hash table from a
// hash to its ring slot, both allocated at their full size up front and free of pointers: a
// new id costs one probe sequence, which finds it or the empty slot it goes to, and nothing
// for the garbage collector to scan.
type dedup struct {
	seed   maphash.Seed
	window int64 // seconds
	shards [dedupShards]dedupShard
}

const dedupShards = 32

type dedupShard struct {
	mu sync.Mutex
	// The table: linear probing over keys (a hash; 0 marks an empty slot) with the ring slot
	// of each key in slots. Its size keeps it at most 2/3 full.
	keys  []uint64
	slots []uint32
	live  int // keys in the table
	// The ring: hash and Unix second of each remembered id, oldest at head.
	ringH  []uint64
	ringAt []uint32
	head   int
	n      int
}

func newDedup(window time.Duration, maxIDs int) *dedup {
	d := &dedup{seed: maphash.MakeSeed(), window: int64(window / time.Second)}
	per := max(1, maxIDs/dedupShards)
	size := per*3/2 + 1
	for i := range d.shards {
		s := &d.shards[i]
		s.ringH = make([]uint64, per)
		s.ringAt = make([]uint32, per)
		s.keys = make([]uint64, size)
		s.slots = make([]uint32, size)
	}
	return d
}

// hash is an id's key: never 0, the empty slot.
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
	for s.n > 0 && int64(s.ringAt[s.head]) < now-d.window {
		s.evict()
	}
	i, found := s.find(h)
	if found {
		return true
	}
	if s.n == len(s.ringH) {
		s.evict() // may shift keys: look again
		i, _ = s.find(h)
	}
	slot := (s.head + s.n) % len(s.ringH)
	s.ringH[slot], s.ringAt[slot] = h, uint32(now)
	s.n++
	s.keys[i], s.slots[i] = h, uint32(slot)
	s.live++
	return false
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

// home is the table slot a key's probe sequence starts at (the hash's high half scaled to
// the table: the low bits chose the shard).
func (s *dedupShard) home(h uint64) int {
	return int((h >> 32) * uint64(len(s.keys)) >> 32)
}

// find returns the slot holding h, or the empty slot where it would go.
func (s *dedupShard) find(h uint64) (int, bool) {
	i := s.home(h)
	for {
		switch s.keys[i] {
		case h:
			return i, true
		case 0:
			return i, false
		}
		if i++; i == len(s.keys) {
			i = 0
		}
	}
}

// remove empties slot i, shifting back the keys after it that would no longer be found.
func (s *dedupShard) remove(i int) {
	n := len(s.keys)
	j := i
	for {
		if j++; j == n {
			j = 0
		}
		k := s.keys[j]
		if k == 0 {
			break
		}
		// k stays when its home lies cyclically in (i, j].
		h := s.home(k)
		if (i <= j && i < h && h <= j) || (i > j && (h > i || h <= j)) {
			continue
		}
		s.keys[i], s.slots[i] = k, s.slots[j]
		i = j
	}
	s.keys[i] = 0
	s.live--
}

// evict drops the oldest ring entry, and its key unless the key now belongs to a newer entry
// (it was forgotten and seen again).
func (s *dedupShard) evict() {
	slot := s.head
	if i, found := s.find(s.ringH[slot]); found && s.slots[i] == uint32(slot) {
		s.remove(i)
	}
	s.head = (s.head + 1) % len(s.ringH)
	s.n--
}

// len returns the number of ids remembered.
func (d *dedup) len() int {
	n := 0
	for i := range d.shards {
		d.shards[i].mu.Lock()
		n += d.shards[i].live
		d.shards[i].mu.Unlock()
	}
	return n
}
