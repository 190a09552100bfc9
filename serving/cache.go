package serving

import (
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
)

// resultCache is an LRU of results read wholly from <ds>_daily.
type resultCache struct {
	mu  sync.Mutex
	max int
	ll  *list.List
	m   map[string]*list.Element
}

type cacheEntry struct {
	key string
	res *Result
}

func newResultCache(n int) *resultCache {
	return &resultCache{max: n, ll: list.New(), m: map[string]*list.Element{}}
}

func (c *resultCache) get(key string) (*Result, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok {
		return nil, false
	}
	c.ll.MoveToFront(e)
	return e.Value.(*cacheEntry).res, true
}

func (c *resultCache) put(key string, r *Result) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok {
		e.Value.(*cacheEntry).res = r
		c.ll.MoveToFront(e)
		return
	}
	c.m[key] = c.ll.PushFront(&cacheEntry{key: key, res: r})
	for c.ll.Len() > c.max {
		e := c.ll.Back()
		c.ll.Remove(e)
		delete(c.m, e.Value.(*cacheEntry).key)
	}
}

// cacheKey identifies the batch side of a plan: the checked request with the end of the
// batch side in place of its own end (a rolling dashboard window keeps its key until the batch
// side changes), the config version and, per day read, its newest successful run, whether it is
// dirty and how many raw rows it holds, so a new exact day, a day turning dirty, a recomputed
// day and rows loaded into a day without a run each change it.
func (s *Server) cacheKey(q *Query, st *snapshot, pl *Plan) string {
	h := sha256.New()
	canon := struct {
		DS, Gran, Order string
		Metrics, Dims   []string
		Filters         []Filter
		Having          []Having
		From, To        int64
		Desc, Exact     bool
		Limit, Offset   int
		Zone            string
	}{q.DS.Name, q.Granularity, q.OrderBy, q.Metrics, q.Dimensions, q.Filters, q.Having, q.From.Unix(), minT(q.To, boundary(&st.State, q.DS.Location())).Unix(), q.Desc, q.Exact, q.Limit, q.Offset, q.Zone.String()}
	b, _ := json.Marshal(canon)
	h.Write(b)
	// Raw parts are exact only up to the speed watermark (see Decide).
	fmt.Fprintf(h, "|%s|%v|", s.cfg.Version, st.SpeedWatermark.Before(minT(q.To, boundary(&st.State, q.DS.Location()))))
	dirty := daySet(st.Dirty)
	for d := pl.BatchFrom; d.Before(pl.BatchTo); d = d.AddDate(0, 0, 1) {
		k, _ := st.days.Get(d)
		fmt.Fprintf(h, "%s:%v:%d,", k.Run, dirty[d], k.RawRows)
	}
	return hex.EncodeToString(h.Sum(nil))
}
