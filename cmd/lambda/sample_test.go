package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/lambda-platform/lambda/shared/broker"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/kafkaconn"
)

// sampleRecords are demo events of every kind the decoder meets: fine ones, one without an id,
// a null and a missing dimension, a missing value, a number as a dimension, and rejects.
var sampleRecords = []string{
	`{"event_id":"e1","ts":"2024-03-01T10:00:00Z","event":"page_view","country":"us","device":"web","user_id":"u1","value":12.5}`,
	`{"event_id":"e2","ts":1709287200123,"event":"click","country":"de","device":"ios","user_id":"u2","value":3}`,
	`{"ts":"2024-03-01T10:05:00.5+01:00","event":"purchase","country":"fr","device":"android","user_id":"u3","value":99.99}`,
	`{"event_id":"e4","ts":"2024-03-01T11:00:00Z","event":"search","country":null,"user_id":"u1"}`,
	`{"event_id":"e5","ts":"yesterday","event":"view"}`,
	`not json at all`,
	`{"event_id":"e7","ts":"2024-03-01T12:00:00Z","event":"signup","country":"br","device":"tv","user_id":"u4","value":"12"}`,
	`{"event_id":"e8","ts":"2024-03-05T12:00:00Z","event":"click","country":"us","device":"web","user_id":"u5","value":1}`,
	`{"event_id":9,"ts":"2024-03-01T13:00:00Z","event":"click","country":"","device":"web","user_id":42,"value":0.25}`,
	`{"event_id":"e10","ts":"2024-03-01T14:00:00Z","event":"share","country":"jp","device":"tablet","user_id":"u6","value":7}`,
	`[1, 2, 3]`,
	`{"event_id":"e12","event":"logout","country":"in","device":"web","user_id":"u7"}`,
}

// TestSample reads the demo dataset's topic on an in-process broker: the newest records, then
// the oldest, each compared with a golden file.
func TestSample(t *testing.T) {
	b, err := broker.Start(broker.Options{Listen: "127.0.0.1:0", Partitions: 1, Topics: []string{"events"}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cfg, err := config.Parse("<demo>", config.DemoYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = []string{b.Addr()}
	sc, err := kafkaconn.Config(cfg.Kafka, "test")
	if err != nil {
		t.Fatal(err)
	}
	sc.Producer.Return.Successes = true
	p, err := sarama.NewSyncProducer(cfg.Kafka.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range sampleRecords {
		if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: "events", Value: sarama.StringEncoder(r)}); err != nil {
			t.Fatal(err)
		}
	}
	_ = p.Close()
	now := func() time.Time { return time.Date(2024, 3, 2, 0, 0, 0, 0, time.UTC) }
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var out bytes.Buffer
	if err := sample(ctx, &out, cfg, &cfg.Datasets[0], sampleOptions{N: 10, Now: now}); err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/sample/newest.golden", out.Bytes())

	out.Reset()
	if err := sample(ctx, &out, cfg, &cfg.Datasets[0], sampleOptions{N: 3, FromBeginning: true, Now: now}); err != nil {
		t.Fatal(err)
	}
	golden(t, "testdata/sample/oldest.golden", out.Bytes())

	// Nothing was committed: the speed layer's group has no offset.
	client, err := sarama.NewClient(cfg.Kafka.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	groups, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	list, err := groups.ListConsumerGroups()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 0 {
		t.Errorf("consumer groups after sample: %v", list)
	}
}
