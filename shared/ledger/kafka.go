package ledger

import (
	"context"
	"fmt"

	"github.com/IBM/sarama"
)

// ReadKafka reads Kafka's word on every partition of topic for the consumer group: the
// committed offset, the oldest and the end offset (see KafkaOffsets). It is the ground truth
// of what is still unconsumed, whatever the ledger says. Cancelling ctx abandons the reads.
func ReadKafka(ctx context.Context, brokers []string, sc *sarama.Config, topic, group string) (map[int32]KafkaOffsets, error) {
	type result struct {
		m   map[int32]KafkaOffsets
		err error
	}
	done := make(chan result, 1)
	go func() {
		m, err := readKafka(brokers, sc, topic, group)
		done <- result{m, err}
	}()
	select {
	case r := <-done:
		return r.m, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func readKafka(brokers []string, sc *sarama.Config, topic, group string) (map[int32]KafkaOffsets, error) {
	client, err := sarama.NewClient(brokers, sc)
	if err != nil {
		return nil, fmt.Errorf("cannot reach kafka %v: %w", brokers, err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("cannot reach kafka %v: %w", brokers, err)
	}
	defer admin.Close() // closes the client too
	parts, err := client.Partitions(topic)
	if err != nil {
		return nil, fmt.Errorf("cannot list partitions of topic %s: %w", topic, err)
	}
	committed, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
	if err != nil {
		return nil, fmt.Errorf("cannot read committed offsets of group %s: %w", group, err)
	}
	out := make(map[int32]KafkaOffsets, len(parts))
	for _, p := range parts {
		k := KafkaOffsets{Committed: -1}
		if b := committed.GetBlock(topic, p); b != nil && b.Err == sarama.ErrNoError {
			k.Committed = b.Offset
		}
		if k.Oldest, err = client.GetOffset(topic, p, sarama.OffsetOldest); err != nil {
			return nil, fmt.Errorf("cannot read the oldest offset of %s/%d: %w", topic, p, err)
		}
		if k.End, err = client.GetOffset(topic, p, sarama.OffsetNewest); err != nil {
			return nil, fmt.Errorf("cannot read the end offset of %s/%d: %w", topic, p, err)
		}
		out[p] = k
	}
	return out, nil
}
