package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/lambda-platform/lambda/shared/broker"
)

func init() {
	register("broker", "run the embedded Kafka-compatible broker (kfake) with the configured topics", runBroker)
	describe("broker", helpText{
		Examples: []string{
			"lambda broker --config lambda.yaml --partitions 4 --data-dir .data/broker",
			"lambda broker --listen 127.0.0.1:19092",
		},
		Notes: "For development and tests: one process, no replication. Production points kafka.brokers at a real Kafka.",
	})
}

func runBroker(ctx context.Context, args []string) error {
	fs, path := flags("broker")
	listen := fs.String("listen", "", "host:port to listen on (default: the first of kafka.brokers)")
	partitions := fs.Int("partitions", 4, "partitions per topic")
	dataDir := fs.String("data-dir", "", "persist the log here so a restart keeps it (default: in memory)")
	sec := addBrokerSecurityFlags(fs)
	cfg, err := loadConfig(fs, path, args)
	if err != nil {
		return err
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
	b, err := broker.Start(o)
	if err != nil {
		return err
	}
	<-ctx.Done()
	start := time.Now()
	b.Close()
	slog.Info("broker stopped", "took", time.Since(start).Round(time.Millisecond))
	return nil
}
