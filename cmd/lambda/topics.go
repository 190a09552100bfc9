package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/IBM/sarama"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/kafkaconn"
)

func init() {
	register("topics", "create the Kafka topics of the configured datasets that do not exist yet (idempotent)", runTopics)
	describe("topics", helpText{
		Usage: []string{"topics --partitions N [--replication-factor R] [flags]"},
		Examples: []string{
			"lambda topics --config lambda.yaml --partitions 6 --replication-factor 3",
		},
		Notes: "Existing topics are left as they are, whatever their partition count: adding partitions is a decision\n" +
			"for kafka-topics.sh --alter (the partition count is the ceiling of speed parallelism).",
	})
}

func runTopics(ctx context.Context, args []string) error {
	fs, path := flags("topics")
	partitions := fs.Int("partitions", 0, "partitions of each topic created (required)")
	replication := fs.Int("replication-factor", -1, "replicas of each partition (-1: the brokers' default.replication.factor)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *partitions <= 0 {
		return usagef(fs, "--partitions is required and must be positive")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	sc, err := kafkaconn.Config(cfg.Kafka, cfg.Kafka.ClientID+"-topics")
	if err != nil {
		return err
	}
	var admin sarama.ClusterAdmin
	for wait := time.Second; ; wait = min(2*wait, 15*time.Second) {
		if admin, err = sarama.NewClusterAdmin(cfg.Kafka.Brokers, sc); err == nil {
			break
		}
		slog.Warn("waiting for kafka", "brokers", cfg.Kafka.Brokers, "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("cannot connect to kafka %v: %w", cfg.Kafka.Brokers, err)
		case <-time.After(wait):
		}
	}
	defer admin.Close()
	existing, err := admin.ListTopics()
	if err != nil {
		return fmt.Errorf("cannot list the topics of %v: %w", cfg.Kafka.Brokers, err)
	}
	done := map[string]bool{}
	for _, ds := range cfg.Datasets {
		if done[ds.Topic] {
			continue
		}
		done[ds.Topic] = true
		if d, ok := existing[ds.Topic]; ok {
			slog.Info("topic exists", "topic", ds.Topic, "partitions", d.NumPartitions)
			if d.NumPartitions != int32(*partitions) {
				slog.Warn("topic has another partition count than asked for: left as it is", "topic", ds.Topic, "partitions", d.NumPartitions, "asked", *partitions)
			}
			continue
		}
		err := admin.CreateTopic(ds.Topic, &sarama.TopicDetail{NumPartitions: int32(*partitions), ReplicationFactor: int16(*replication)}, false)
		var te *sarama.TopicError
		if errors.As(err, &te) && te.Err == sarama.ErrTopicAlreadyExists {
			slog.Info("topic exists", "topic", ds.Topic)
			continue
		}
		if err != nil {
			return fmt.Errorf("cannot create topic %s: %w", ds.Topic, err)
		}
		slog.Info("topic created", "topic", ds.Topic, "partitions", *partitions, "replication_factor", *replication)
	}
	return nil
}
