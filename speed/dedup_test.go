package speed

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

func TestDedupWindowAndCap(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	d := newDedup(time.Minute, 64*dedupShards)
	if d.seen("a", t0) || !d.seen("a", t0.Add(30*time.Second)) {
		t.Fatal("an id seen within the window is not a duplicate")
	}
	if d.seen("a", t0.Add(2*time.Minute)) {
		t.Fatal("an id older than the window is still remembered")
	}
	// Over the cap the oldest ids go first.
	for i := range 100 * dedupShards {
		d.seen(fmt.Sprint("id", i), t0.Add(2*time.Minute))
	}
	if n := d.counting(t0.Add(2 * time.Minute).Unix()); n > 64*dedupShards {
		t.Fatalf("%d ids held, cap %d", n, 64*dedupShards)
	}
	if !d.seen(fmt.Sprint("id", 100*dedupShards-1), t0.Add(2*time.Minute)) {
		t.Fatal("the newest id was evicted")
	}
	if d.seen("id0", t0.Add(2*time.Minute)) {
		t.Fatal("the oldest id survived the cap")
	}
	// Forgotten ids (rows dropped before reaching ClickHouse) are new again.
	d.seen("b", t0.Add(2*time.Minute))
	d.forgetHash(d.hash("b"))
	if d.seen("b", t0.Add(2*time.Minute)) {
		t.Fatal("a forgotten id is still a duplicate")
	}
}

func TestDayOf(t *testing.T) {
	for _, tc := range []struct {
		t    time.Time
		want int64
	}{
		{time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC), 0},
		{time.Date(1970, 1, 1, 23, 59, 59, 0, time.UTC), 0},
		{time.Date(1970, 1, 2, 0, 0, 0, 0, time.UTC), 1},
		{time.Date(1969, 12, 31, 23, 0, 0, 0, time.UTC), -1},
		{time.Date(2026, 3, 10, 12, 0, 0, 0, time.FixedZone("x", 14*3600)), 20521}, // 22:00 UTC on the 9th,
	} {
		if got := dayOf(tc.t); got != tc.want {
			t.Errorf("dayOf(%v) = %d, want %d", tc.t, got, tc.want)
		}
	}
}

// refDedup is the dedup window as it was written first (a Go map and a ring per shard, with
// the same shards and caps): the reference the hash table must agree with.
type refDedup struct {
	d      *dedup // for the seed, window and shard sizes
	shards [dedupShards]refShard
}

type refShard struct {
	m    map[uint64]uint32
	ring []refEntry
	head int
	n    int
	seq  uint32
}

type refEntry struct {
	h       uint64
	seq, at uint32
}

func newRefDedup(d *dedup) *refDedup {
	r := &refDedup{d: d}
	for i := range r.shards {
		r.shards[i] = refShard{m: map[uint64]uint32{}, ring: make([]refEntry, d.shards[i].keep)}
	}
	return r
}

func (r *refDedup) seen(h uint64, now int64) bool {
	s := &r.shards[h%dedupShards]
	for s.n > 0 && int64(s.ring[s.head].at) < now-r.d.window {
		s.evict()
	}
	if _, ok := s.m[h]; ok {
		return true
	}
	if s.n == len(s.ring) {
		s.evict()
	}
	s.seq++
	s.ring[(s.head+s.n)%len(s.ring)] = refEntry{h: h, seq: s.seq, at: uint32(now)}
	s.n++
	s.m[h] = s.seq
	return false
}

func (s *refShard) evict() {
	e := s.ring[s.head]
	if s.m[e.h] == e.seq {
		delete(s.m, e.h)
	}
	s.head = (s.head + 1) % len(s.ring)
	s.n--
}

func (r *refDedup) forget(h uint64) { delete(r.shards[h%dedupShards].m, h) }

// counting is the number of ids the reference would take for duplicates at now.
func (r *refDedup) counting(now int64) int {
	n := 0
	for i := range r.shards {
		s := &r.shards[i]
		for k := range s.n {
			e := s.ring[(s.head+k)%len(s.ring)]
			if int64(e.at) >= now-r.d.window && s.m[e.h] == e.seq {
				n++
			}
		}
	}
	return n
}

// TestDedupMatchesReference runs random ids (with repeats), forgets and a moving clock
// through the hash table and the reference: every answer and the count must agree. The
// shards are small, so the table wraps, fills to its cap and is swept often.
func TestDedupMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct{ window, ids int }{{30, 40 * dedupShards}, {1000, 5 * dedupShards}, {5, 1}} {
		d := newDedup(time.Duration(tc.window)*time.Second, tc.ids)
		ref := newRefDedup(d)
		now := int64(1_700_000_000)
		for i := range 200_000 {
			if rng.IntN(100) == 0 {
				now += int64(rng.IntN(10))
			}
			id := fmt.Sprint("id", rng.IntN(3*tc.ids+10))
			h := d.hash(id)
			if rng.IntN(50) == 0 {
				d.forgetHash(h)
				ref.forget(h)
				continue
			}
			if got, want := d.seenHash(h, now), ref.seen(h, now); got != want {
				t.Fatalf("window %d, cap %d, op %d: seen(%s) = %v, want %v", tc.window, tc.ids, i, id, got, want)
			}
		}
		if got, want := d.counting(now), ref.counting(now); got != want {
			t.Errorf("window %d, cap %d: %d ids count, want %d", tc.window, tc.ids, got, want)
		}
		if d.len() < d.counting(now) {
			t.Errorf("len %d is less than the %d ids that count", d.len(), d.counting(now))
		}
	}
}

// TestDedupBatchMatchesOneByOne sends the same hashes (with repeats, within a batch too)
// through seenBatch and one by one through seenHash: every answer and the count must agree.
func TestDedupBatchMatchesOneByOne(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, tc := range []struct{ window, ids int }{{30, 40 * dedupShards}, {1000, 5 * dedupShards}, {5, 1}} {
		one := newDedup(time.Duration(tc.window)*time.Second, tc.ids)
		batched := newDedup(time.Duration(tc.window)*time.Second, tc.ids)
		now := int64(1_700_000_000)
		var order []int32
		for i := range 2_000 {
			if rng.IntN(10) == 0 {
				now += int64(rng.IntN(10))
			}
			hs := make([]uint64, rng.IntN(600))
			for j := range hs {
				hs[j] = one.hash(fmt.Sprint("id", rng.IntN(3*tc.ids+10)))
			}
			dup := make([]bool, len(hs))
			var n int
			n, order = batched.seenBatch(hs, now, dup, order)
			want := 0
			for j, h := range hs {
				w := one.seenHash(h, now)
				if w {
					want++
				}
				if dup[j] != w {
					t.Fatalf("window %d, cap %d, batch %d, id %d of %d: seenBatch says %v, one by one %v", tc.window, tc.ids, i, j, len(hs), dup[j], w)
				}
			}
			if n != want {
				t.Fatalf("window %d, cap %d, batch %d: seenBatch counts %d duplicates, want %d", tc.window, tc.ids, i, n, want)
			}
		}
		if got, want := batched.counting(now), one.counting(now); got != want {
			t.Errorf("window %d, cap %d: %d ids count, want %d", tc.window, tc.ids, got, want)
		}
	}
}

// BenchmarkDedupSeen is the speed layer's per-event dedup: a new id into a full window of 2M
// ids (each one evicts the oldest).
func BenchmarkDedupSeen(b *testing.B) {
	d := newDedup(time.Hour, 2_000_000)
	ids := make([]string, 4_000_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i*7919)
	}
	now := int64(1_700_000_000)
	for _, id := range ids[:2_000_000] {
		d.seenHash(d.hash(id), now)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		d.seenHash(d.hash(ids[2_000_000+i%2_000_000]), now)
	}
}

// BenchmarkDedupSeenBatch is BenchmarkDedupSeen in the consumer's batches of 512 ids.
func BenchmarkDedupSeenBatch(b *testing.B) {
	d := newDedup(time.Hour, 2_000_000)
	ids := make([]string, 4_000_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i*7919)
	}
	now := int64(1_700_000_000)
	for _, id := range ids[:2_000_000] {
		d.seenHash(d.hash(id), now)
	}
	hs := make([]uint64, consumeBatch)
	dup := make([]bool, consumeBatch)
	var order []int32
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += consumeBatch {
		for j := range hs {
			hs[j] = d.hash(ids[2_000_000+(i+j)%2_000_000])
		}
		_, order = d.seenBatch(hs, now, dup, order)
	}
}

// BenchmarkDedupReference is the same with the map-based window it replaced.
func BenchmarkDedupReference(b *testing.B) {
	d := newDedup(time.Hour, 2_000_000)
	r := newRefDedup(d)
	ids := make([]string, 4_000_000)
	for i := range ids {
		ids[i] = fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i*7919)
	}
	now := int64(1_700_000_000)
	for _, id := range ids[:2_000_000] {
		r.seen(d.hash(id), now)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		r.seen(d.hash(ids[2_000_000+i%2_000_000]), now)
	}
}

// TestDedupFullSize runs a window of the default size, whose table comes from allocEntries
// (on Linux, memory of its own outside the heap): ids are remembered, duplicates found,
// forgotten ids new again, and the table is freed once the window is unreachable.
func TestDedupFullSize(t *testing.T) {
	d := newDedup(time.Hour, 2_000_000)
	if runtime.GOOS == "linux" && d.offHeap < 2_000_000*2*16 {
		t.Errorf("the table of 2M ids takes %d bytes off the heap, want at least %d", d.offHeap, 2_000_000*2*16)
	}
	now := int64(1_700_000_000)
	for i := range 200_000 {
		if d.seenHash(d.hash(fmt.Sprint("id", i)), now) {
			t.Fatalf("id%d is new", i)
		}
	}
	for i := range 200_000 {
		if !d.seenHash(d.hash(fmt.Sprint("id", i)), now) {
			t.Fatalf("id%d is a duplicate", i)
		}
	}
	d.forgetHash(d.hash("id7"))
	if d.seenHash(d.hash("id7"), now) {
		t.Fatal("a forgotten id is still a duplicate")
	}
	if n := d.counting(now); n != 200_000 {
		t.Errorf("%d ids count, want 200000", n)
	}
	d = nil
	runtime.GC() // the cleanup unmaps the table; nothing may touch it after
	runtime.GC()
}
