package e2e

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// apiStaleness is how old a state the API may answer with. `lambda serve` reuses a dataset's
// watermarks, dirty days and runs for stateTTL (1 s) after reading them, and while one request
// re-reads them the others keep the previous snapshot a little longer. A day made dirty by late
// rows may therefore still be answered exact, with the value of the run that preceded those
// rows, for about that long: the checker accounts for it rather than waiting, so that it keeps
// polling throughout a scenario. It bounds an API answer from below by what was committed
// apiStaleness before the request (the late rows committed since may be missing from it),
// and from above by what was in raw after the answer, as it bounds the view (which reads the
// ledger on every query) by what was committed just before the read.
const apiStaleness = 2 * time.Second

// rawExactIsFinal: rows the API reads from raw (exact:true requests, days below the boundary
// without a successful run) may be flagged exact only when the day is complete (before the
// speed watermark) and, below the boundary, has a successful run: the product does so (serving
// Decide), and the checker enforces it.
const rawExactIsFinal = true

// checker is assertion (a): it polls the API and the view of one dataset throughout a scenario
// and records every exact:true value that lies outside the truth of the moment.
type checker struct {
	s    *stack
	stop chan struct{}
	done chan struct{}

	mu sync.Mutex
	// watch: days that must not be exact while records of theirs are produced but not committed
	// (the consumer is dead or stuck).
	watch map[time.Time]bool
	// needRun: days that must not be exact before a run of theirs succeeded.
	needRun map[time.Time]bool
	// history holds the lower bounds of the recent reads, oldest first.
	history             []bounds
	violations          []string
	iterations, failed  int
	exactAPI, exactView int
	lastErr             error
	diagnosed           map[time.Time]bool
	// spent is the time the reads took, by part.
	spent map[string]time.Duration
}

func (c *checker) took(part string, since time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spent[part] += time.Since(since)
}

// check starts the checker; finish stops it and reports.
func (s *stack) check() *checker {
	c := &checker{s: s, stop: make(chan struct{}), done: make(chan struct{}), watch: map[time.Time]bool{}, needRun: map[time.Time]bool{}, spent: map[string]time.Duration{}}
	go func() {
		defer close(c.done)
		for {
			select {
			case <-c.stop:
				return
			default:
			}
			c.once()
			select {
			case <-c.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return c
}

func (c *checker) setWatch(day time.Time, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.watch[day] = on
}

func (c *checker) setNeedRun(day time.Time, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.needRun[day] = on
}

// finish stops the checker and fails the test on every violation it saw; it also fails when
// the checker never saw an exact value (it would have asserted nothing).
func (c *checker) finish() {
	t := c.s.t
	t.Helper()
	select {
	case <-c.stop:
		return
	default:
	}
	close(c.stop)
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	t.Logf("%s checker: %d reads (%d failed: ClickHouse or the API unreachable, last %v), %d exact values from the API and %d from the view checked",
		c.s.ds, c.iterations, c.failed, c.lastErr, c.exactAPI, c.exactView)
	t.Logf("%s checker: time spent %v", c.s.ds, c.spent)
	for i, v := range c.violations {
		if i == 20 {
			t.Errorf("… and %d more violations", len(c.violations)-i)
			break
		}
		t.Error(v)
	}
	if c.exactAPI == 0 || c.exactView == 0 {
		t.Errorf("%s checker: saw %d exact values from the API and %d from the view: it asserted nothing", c.s.ds, c.exactAPI, c.exactView)
	}
}

func (c *checker) violate(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.violations = append(c.violations, fmt.Sprintf("%s: ", time.Now().UTC().Format("15:04:05.000"))+fmt.Sprintf(format, args...))
}

// diagnose describes what the ledger says of a day, the first time a violation names it.
func (c *checker) diagnose(day time.Time) {
	c.mu.Lock()
	if c.diagnosed == nil {
		c.diagnosed = map[time.Time]bool{}
	}
	done := c.diagnosed[day]
	c.diagnosed[day] = true
	c.mu.Unlock()
	if done {
		return
	}
	s := c.s
	d := day.Format(time.DateOnly)
	runs, err1 := s.e.ch.query(fmt.Sprintf("SELECT run_id, status, rows_raw, rows_out, at_us, toString(started_at), host FROM `%s`.batch_runs WHERE dataset = '%s' AND day = toDate('%s') ORDER BY at_us FORMAT TabSeparated", s.e.db, s.ds, d))
	daily, err2 := s.e.ch.query(fmt.Sprintf("SELECT run_id, count(), sumIf(orders, grouping = '') FROM `%s`.`%s_daily` WHERE day = toDate('%s') GROUP BY run_id FORMAT TabSeparated", s.e.db, s.ds, d))
	raw, err3 := s.e.ch.query(fmt.Sprintf("SELECT sum(rows) FROM `%s`.`%s_raw_days` WHERE day = toDate('%s')", s.e.db, s.ds, d))
	c.violate("diagnosis of %s: batch_runs (run, status, rows_raw, rows_out, at_us, started, host):\n%s\n<ds>_daily (run, rows, orders): %s\nraw rows: %s (errors %v %v %v)", d, runs, daily, raw, err1, err2, err3)
}

// gap records a raw row flagged exact where the day is incomplete or unrun (see rawExactIsFinal).
func (c *checker) gap(format string, args ...any) {
	c.s.e.gapsMu.Lock()
	defer c.s.e.gapsMu.Unlock()
	c.s.e.gaps = append(c.s.e.gaps, fmt.Sprintf("%s: ", c.s.ds)+fmt.Sprintf(format, args...))
}

func (c *checker) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed++
	c.lastErr = err
}

// loFor returns the newest lower bound read at or before at (none: nothing is known).
func (c *checker) loFor(at time.Time) bounds {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b bounds
	for _, h := range c.history {
		if h.at.After(at) {
			break
		}
		b = h
	}
	return b
}

// once reads the committed offsets (c0), the API and the view, then what may have been read
// (c1: committed offsets and raw's offsets), and checks every exact value against the truth
// between them.
func (c *checker) once() {
	s := c.s
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	lo, err := s.lower()
	c.took("lower", t0)
	if err != nil {
		c.fail(err)
		return
	}
	c.mu.Lock()
	c.iterations++
	c.history = append(c.history, lo)
	for len(c.history) > 0 && lo.at.Sub(c.history[0].at) > 3*apiStaleness {
		c.history = c.history[1:]
	}
	c.mu.Unlock()

	apiStart := time.Now()
	defer func() { c.took("total", t0) }()
	type answer struct {
		q    apiQuery
		rows []row
	}
	var answers []answer
	for _, q := range faultQueries {
		rows, _, err := s.query(ctx, q)
		if err != nil {
			c.fail(err)
			answers = nil
			break
		}
		answers = append(answers, answer{q, rows})
	}
	c.took("api", apiStart)
	t1 := time.Now()
	viewRows, verr := s.view("exact = 1")
	c.took("view", t1)
	t1 = time.Now()
	if verr != nil {
		c.fail(verr)
	}
	hi, committed, err := s.upper()
	if err != nil {
		c.fail(err)
		return
	}
	runs, err := s.succeeded()
	if err != nil {
		c.fail(err)
		return
	}
	c.took("upper", t1)
	t1 = time.Now()
	defer func() { c.took("truth", t1) }()
	loAPI := c.loFor(apiStart.Add(-apiStaleness))
	tHi, tLo, tLoAPI := s.log.truth(hi), s.log.truth(lo), s.log.truth(loAPI)

	c.mu.Lock()
	watch, needRun := map[time.Time]bool{}, map[time.Time]bool{}
	for d, on := range c.watch {
		watch[d] = on
	}
	for d, on := range c.needRun {
		needRun[d] = on
	}
	c.mu.Unlock()
	checkRow := func(what string, r row, lo map[groupKey]*agg) {
		for _, m := range faultMetrics {
			if err := within(m, r.vals[m], lo[r.key], tHi[r.key]); err != nil {
				c.violate("%s %s: exact:true (source %s) with %v", what, r.key, r.source, err)
				c.diagnose(r.key.day)
			}
		}
		// Rows read from raw are exact over what raw holds, by design (DESIGN, merge rule); that
		// they are flagged exact for a day the platform knows to be incomplete, or that has no
		// successful run, is a gap reported apart (rawExactGap).
		report := c.violate
		if r.source == "raw" && !rawExactIsFinal {
			report = c.gap
		}
		if watch[r.key.day] && s.log.uncommitted(r.key.day, committed) {
			report("%s %s: exact:true (source %s) while records of the day are produced and not consumed (committed %v)", what, r.key, r.source, committed)
		}
		if needRun[r.key.day] && !runs[r.key.day] {
			report("%s %s: exact:true (source %s) before any run of the day succeeded", what, r.key, r.source)
		}
	}
	n := 0
	for _, a := range answers {
		for _, r := range a.rows {
			if r.exact {
				n++
				checkRow(a.q.String(), r, tLoAPI)
			}
		}
	}
	nv := 0
	for _, r := range viewRows {
		if r.exact {
			nv++
			checkRow("view", r, tLo)
		}
	}
	c.mu.Lock()
	c.exactAPI += n
	c.exactView += nv
	c.mu.Unlock()
}
