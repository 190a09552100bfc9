package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"golang.org/x/sync/errgroup"

	"github.com/lambda-platform/lambda/batchlayer"
	"github.com/lambda-platform/lambda/shared/broker"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/gen"
	"github.com/lambda-platform/lambda/shared/kafkaconn"
	"github.com/lambda-platform/lambda/speed"
)

func init() {
	register("dev", "everything in one process: broker, migrate, speed, batch, serve and a generator with days of history", runDev)
	describe("dev", helpText{
		Examples: []string{
			"lambda dev                                  # what make run starts: 7 days of history, then live events",
			"lambda dev --config my.yaml --history-days 30 --per-day 100000",
			`lambda dev --data-dir "" --broker-listen 127.0.0.1:0   # broker in memory, any free port`,
		},
		Notes: "Dashboards, API and /metrics on serving.listen (127.0.0.1:8080 by default). Ctrl-C stops everything in order.",
	})
}

// runDev runs the whole platform in one process for development and demos: the embedded
// broker, the schema, the speed layer, the batch layer on a short schedule, the API with the
// dashboards, and a generator that produces days of history and then a live stream.
//
// Stopping goes in reverse order: the generator, the API and the batch layer stop with ctx;
// the speed layer flushes and commits what it holds while the broker still runs; the broker
// closes last.
func runDev(ctx context.Context, args []string) error {
	fs, path := flags("dev")
	listen := fs.String("broker-listen", "", "host:port of the embedded broker (default: the first of kafka.brokers; port 0 picks one)")
	partitions := fs.Int("partitions", 4, "partitions per topic")
	dataDir := fs.String("data-dir", ".data/broker", "persist the broker's log here so a restart keeps it (empty: in memory)")
	days := fs.Int("history-days", 7, "days of history produced at start (skipped when the topic already holds records)")
	perDay := fs.Int("per-day", 20000, "history events per day")
	rate := fs.Float64("rate", -1, "live events per second after the history (default: the history's own rate, per-day/86400, so that today continues the past days; 0: none)")
	dup := fs.Float64("dup", 0.02, "ratio of duplicates")
	late := fs.Float64("late", 0, "ratio of late live events (1..history-days days back): each makes a sealed day dirty until the next batch tick")
	bad := fs.Float64("bad", 0.005, "ratio of malformed events")
	schedule := fs.String("batch-schedule", "@every 20s", "cron spec of the batch layer for every dataset (a day is sealed once its end + batch.grace has passed)")
	insertTimeout := fs.Duration("insert-timeout", 10*time.Second, "overrides clickhouse.insert_timeout (0 keeps it): the batch layer takes rows ingested this long before a run as possibly unseen by it, so a day just filled becomes exact only after it")
	sec := addBrokerSecurityFlags(fs)
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
	}
	// With the default 60 s, the days the history just filled would stay dirty for a minute:
	// a local server's inserts take well under a second.
	if *insertTimeout > 0 {
		cfg.ClickHouse.InsertTimeout = config.Duration(*insertTimeout)
	}
	if *rate < 0 {
		*rate = float64(*perDay) / 86400
	}
	if *listen == "" {
		*listen = cfg.Kafka.Brokers[0]
	}
	var topics []string
	for _, d := range cfg.Datasets {
		topics = append(topics, d.Topic)
	}

	o := broker.Options{Listen: *listen, Partitions: int32(*partitions), Topics: topics, DataDir: *dataDir, Logger: slog.Default()}
	if err := sec.apply(&o, cfg.Kafka); err != nil {
		return err
	}
	if o.TLS != nil && !cfg.Kafka.TLS.Enabled {
		return errors.New("--tls-cert: dev's own clients connect with kafka.tls: enable it, with a ca_file that trusts the certificate")
	}
	b, err := broker.Start(o)
	if err != nil {
		return err
	}
	closeBroker := sync.OnceFunc(b.Close)
	defer closeBroker()
	// Every client talks to the embedded broker, wherever it listens.
	cfg.Kafka.Brokers = []string{b.Addr()}

	if err := migrate(ctx, cfg, false); err != nil {
		return err
	}
	reg := newRegistry()
	sp, err := speed.New(cfg, speed.Options{Logger: slog.Default(), Registerer: reg})
	if err != nil {
		return err
	}
	bl, err := batchlayer.New(cfg, batchlayer.Options{Logger: slog.Default(), Registerer: reg, Schedule: *schedule})
	if err != nil {
		return err
	}
	defer bl.Close()
	// One process: the API's /healthz tells the speed and batch layers' health too.
	srv, err := newServer(cfg, reg, nil, sp.Health, bl.Health)
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	var stopping time.Time
	g.Go(func() error { <-gctx.Done(); stopping = time.Now(); return nil })
	g.Go(func() error { return sp.Run(gctx) })
	g.Go(func() error { return bl.Run(gctx) })
	g.Go(func() error { return srv.Run(gctx) })
	g.Go(func() error { announce(gctx, cfg.Serving.Listen, *schedule); return nil })
	for i := range cfg.Datasets {
		ds := &cfg.Datasets[i]
		g.Go(func() error {
			return generate(gctx, cfg, ds, gen.Options{Seed: uint64(time.Now().UnixNano()) + uint64(i), Days: *days,
				DupRatio: *dup, LateRatio: *late, BadRatio: *bad}, *perDay, *rate)
		})
	}
	err = g.Wait()
	closeBroker()
	slog.Info("dev stopped", "took", time.Since(stopping).Round(time.Millisecond))
	return err
}

// generate produces a dataset's history, unless its topic already holds records (a restart
// with a persisted broker must not add the history twice), then live events until ctx is done.
func generate(ctx context.Context, cfg *config.Config, ds *config.Dataset, o gen.Options, perDay int, rate float64) error {
	history := o.Days * perDay
	if n, err := topicRecords(cfg.Kafka, cfg.Kafka.ClientID+"-dev", ds.Topic); err != nil {
		return err
	} else if n > 0 && history > 0 {
		slog.Info("topic already holds records: not producing history again", "dataset", ds.Name, "topic", ds.Topic, "records", n)
		history = 0
	}
	p, err := gen.NewProducer(cfg.Kafka, cfg.Kafka.ClientID+"-gen")
	if err != nil {
		return err
	}
	defer p.Close()
	slog.Info("generating", "dataset", ds.Name, "topic", ds.Topic, "history_days", o.Days, "history", history, "rate", rate)
	st, err := produce(ctx, p, ds, o, history, rate, 0)
	slog.Info("generator stopped", "dataset", ds.Name, "sent", st.Sent, "valid", st.Valid, "duplicates", st.Duplicates,
		"late", st.Late, "malformed", st.Malformed)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// topicRecords returns how many records a topic holds over all its partitions.
func topicRecords(k config.Kafka, clientID, topic string) (int64, error) {
	sc, err := kafkaconn.Config(k, clientID)
	if err != nil {
		return 0, err
	}
	if err := kafkaconn.Check(context.Background(), k, sc); err != nil {
		return 0, err
	}
	c, err := sarama.NewClient(k.Brokers, sc)
	if err != nil {
		return 0, fmt.Errorf("cannot connect to %v: %w", k.Brokers, err)
	}
	defer c.Close()
	parts, err := c.Partitions(topic)
	if err != nil {
		return 0, fmt.Errorf("cannot list the partitions of %s: %w", topic, err)
	}
	var n int64
	for _, p := range parts {
		first, err := c.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			return 0, fmt.Errorf("cannot read the offsets of %s/%d: %w", topic, p, err)
		}
		next, err := c.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return 0, fmt.Errorf("cannot read the offsets of %s/%d: %w", topic, p, err)
		}
		n += next - first
	}
	return n, nil
}

// announce prints the dashboard URL once the API answers /healthz.
func announce(ctx context.Context, listen, schedule string) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	base := "http://" + net.JoinHostPort(host, port) + "/"
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		resp, err := client.Get(base + "healthz")
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
	}
	fmt.Printf("\n  lambda dev is up. Dashboards: %s\n\n  API %sapi/v1/ · metrics %smetrics · past days become exact at the next batch tick (%s) · Ctrl-C stops\n\n",
		base, base, base, schedule)
}
