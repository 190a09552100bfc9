package ledger

import (
	"context"
	"fmt"
	"sync"

	"github.com/IBM/sarama"
)

// ReadKafka reads Kafka's word on every partition of topic for the consumer group: the
// committed offset, the oldest and the end offset (see KafkaOffsets). It is the ground truth
// of what is still unconsumed, whatever the ledger says. Cancelling ctx abandons the reads.
func ReadKafka(ctx context.Context, brokers []string, sc *sarama.Config, topic, group string) (map[int32]KafkaOffsets, error) {
	r := NewKafkaReader(brokers, sc)
	defer r.Close()
	return r.Read(ctx, topic, group)
}

// KafkaReader reads Kafka's offsets over one connection kept between reads (a reader asking
// every second, as the API's state refresh does, does not reconnect every time). Safe for
// concurrent use; a read that fails drops the connection and the next one reconnects.
type KafkaReader struct {
	brokers []string
	sc      *sarama.Config
	mu      sync.Mutex
	client  sarama.Client
	admin   sarama.ClusterAdmin
}

// NewKafkaReader returns a reader; it connects at the first Read.
func NewKafkaReader(brokers []string, sc *sarama.Config) *KafkaReader {
	return &KafkaReader{brokers: brokers, sc: sc}
}

// Close drops the connection.
func (r *KafkaReader) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.drop()
}

func (r *KafkaReader) drop() {
	if r.admin != nil {
		_ = r.admin.Close() // closes the client too
	} else if r.client != nil {
		_ = r.client.Close()
	}
	r.client, r.admin = nil, nil
}

// Read returns Kafka's word on every partition of topic for group (see ReadKafka).
// Cancelling ctx abandons the read (and its connection).
func (r *KafkaReader) Read(ctx context.Context, topic, group string) (map[int32]KafkaOffsets, error) {
	type result struct {
		m   map[int32]KafkaOffsets
		err error
	}
	done := make(chan result, 1)
	go func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		m, err := r.read(topic, group)
		if err != nil {
			r.drop()
		}
		done <- result{m, err}
	}()
	select {
	case res := <-done:
		return res.m, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (r *KafkaReader) read(topic, group string) (map[int32]KafkaOffsets, error) {
	if r.client == nil {
		client, err := sarama.NewClient(r.brokers, r.sc)
		if err != nil {
			return nil, fmt.Errorf("cannot reach kafka %v: %w", r.brokers, err)
		}
		admin, err := sarama.NewClusterAdminFromClient(client)
		if err != nil {
			_ = client.Close()
			return nil, fmt.Errorf("cannot reach kafka %v: %w", r.brokers, err)
		}
		r.client, r.admin = client, admin
	}
	if err := r.client.RefreshMetadata(topic); err != nil {
		return nil, fmt.Errorf("cannot read the metadata of topic %s: %w", topic, err)
	}
	parts, err := r.client.Partitions(topic)
	if err != nil {
		return nil, fmt.Errorf("cannot list partitions of topic %s: %w", topic, err)
	}
	committed, err := r.admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
	if err != nil {
		return nil, fmt.Errorf("cannot read committed offsets of group %s: %w", group, err)
	}
	out := make(map[int32]KafkaOffsets, len(parts))
	for _, p := range parts {
		k := KafkaOffsets{Committed: -1}
		if b := committed.GetBlock(topic, p); b != nil && b.Err == sarama.ErrNoError {
			k.Committed = b.Offset
		}
		if k.Oldest, err = r.client.GetOffset(topic, p, sarama.OffsetOldest); err != nil {
			return nil, fmt.Errorf("cannot read the oldest offset of %s/%d: %w", topic, p, err)
		}
		if k.End, err = r.client.GetOffset(topic, p, sarama.OffsetNewest); err != nil {
			return nil, fmt.Errorf("cannot read the end offset of %s/%d: %w", topic, p, err)
		}
		out[p] = k
	}
	return out, nil
}
