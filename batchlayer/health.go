package batchlayer

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/robfig/cron/v3"

	"github.com/lambda-platform/lambda/shared/kafkaconn"
)

// tickLog remembers, per dataset, when the scheduler last started a tick and whether one is
// running, so that Health can tell a scheduler that stopped ticking.
type tickLog struct {
	mu      sync.Mutex
	started bool // Run is scheduling
	ds      map[string]*tickState
}

type tickState struct {
	sched   cron.Schedule
	last    time.Time // start of the newest tick (or of Run)
	running bool
}

// healthMetrics are the scheduler's liveness gauges.
type healthMetrics struct {
	lastTick *prometheus.GaugeVec
}

func newHealthMetrics() *healthMetrics {
	return &healthMetrics{lastTick: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lambda_batch_last_tick_timestamp_seconds",
		Help: "When the scheduler last started a tick of the dataset, as a Unix time."}, []string{"dataset"})}
}

func (h *healthMetrics) register(reg prometheus.Registerer) { reg.MustRegister(h.lastTick) }

// tickSlack is how late a tick may start before the scheduler counts as stuck, beyond one
// schedule period.
const tickSlack = time.Minute

func (t *tickLog) start(now time.Time, scheds map[string]cron.Schedule) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.started = true
	t.ds = map[string]*tickState{}
	for name, s := range scheds {
		t.ds[name] = &tickState{sched: s, last: now}
	}
}

func (t *tickLog) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.started = false
}

// begin records the start of a tick; the returned func records its end.
func (t *tickLog) begin(name string, m *healthMetrics) func() {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.ds[name]
	if st == nil {
		return func() {}
	}
	now := time.Now()
	st.last, st.running = now, true
	m.lastTick.WithLabelValues(name).Set(float64(now.Unix()))
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		st.running = false
	}
}

// check returns an error naming every dataset whose scheduled tick is overdue: not running,
// and the tick after its newest one should have started more than one schedule period plus
// tickSlack ago. skip reports datasets another process schedules (the batch lease).
func (t *tickLog) check(now time.Time, skip func(name string) bool) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.started {
		return nil
	}
	var errs []error
	for name, st := range t.ds {
		if st.running || skip(name) {
			continue
		}
		next := st.sched.Next(st.last)
		period := st.sched.Next(next).Sub(next)
		if late := now.Sub(next); late > period+tickSlack {
			errs = append(errs, fmt.Errorf("batch %s: no tick since %s (one was due at %s)", name,
				st.last.UTC().Format(time.RFC3339), next.UTC().Format(time.RFC3339)))
		}
	}
	return errors.Join(errs...)
}

// Health reports whether the scheduler is ticking: an error names every dataset whose ticks
// stopped (a scheduler that missed its ticks must be restarted). A layer that is not running
// its scheduler (a backfill) is healthy.
func (l *Layer) Health() error {
	return l.ticks.check(time.Now(), func(name string) bool { return l.lease != nil && !l.lease.Held(name) })
}

// saramaConfig is the Kafka client configuration (TLS and SASL included) for reading the
// consumer group's offsets.
func (l *Layer) saramaConfig() (*sarama.Config, error) {
	sc, err := kafkaconn.Config(l.cfg.Kafka, l.cfg.Kafka.ClientID+"-batch")
	if err != nil {
		return nil, err
	}
	sc.Net.DialTimeout = 5 * time.Second
	sc.Metadata.Retry.Max = 1
	return sc, nil
}
