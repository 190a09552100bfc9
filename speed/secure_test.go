package speed

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/lambda-platform/lambda/shared/broker"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/kafkaconn"
	"github.com/lambda-platform/lambda/shared/nettest"
	"github.com/lambda-platform/lambda/shared/schema"
)

// newSecureEnv is newEnv with a broker that speaks TLS only and requires SASL SCRAM-SHA-512,
// and a configuration that trusts it and authenticates with password.
func newSecureEnv(t *testing.T, password string) *env {
	t.Helper()
	certs := nettest.NewCerts(t)
	b, err := broker.Start(broker.Options{Listen: "127.0.0.1:0", Partitions: 3, Topics: []string{"events"}, TLS: certs.Server,
		RequireSASL: true, Users: []broker.User{{Mechanism: config.ScramSHA512, Name: "speed", Password: "s3cret"}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	cfg := chtest.Config(t, nil)
	cfg.Kafka.Brokers = []string{b.Addr()}
	cfg.Kafka.GroupPrefix = cfg.ClickHouse.Database
	cfg.Kafka.TLS = config.TLS{Enabled: true, CAFile: certs.CAFile}
	cfg.Kafka.SASL = config.SASL{Mechanism: config.ScramSHA512, Username: "speed", Password: password}
	cfg.Speed.FlushInterval = config.Duration(200 * time.Millisecond)
	conn := chtest.New(t, cfg)
	if _, err := schema.Migrate(context.Background(), conn, cfg, schema.MigrateOptions{Logger: quiet()}); err != nil {
		t.Fatal(err)
	}
	good := cfg.Kafka
	good.SASL.Password = "s3cret"
	sc, err := kafkaconn.Config(good, "test")
	if err != nil {
		t.Fatal(err)
	}
	sc.Producer.Return.Successes = true
	prod, err := sarama.NewSyncProducer(cfg.Kafka.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = prod.Close() })
	return &env{t: t, cfg: cfg, conn: conn, broker: b, prod: prod, db: cfg.ClickHouse.Database}
}

// TestSecureKafka: the speed layer consumes over TLS with SASL SCRAM-SHA-512.
func TestSecureKafka(t *testing.T) {
	e := newSecureEnv(t, "s3cret")
	want := map[string]bool{}
	var ps []string
	for i := range 300 {
		id := fmt.Sprintf("tls-%d", i)
		ps = append(ps, ev(id, time.Now(), "DE", 1))
		want[id] = true
	}
	e.produce(ps...)
	r := e.speed("secure", nil)
	deadline := time.Now().Add(time.Minute)
	for e.uint(fmt.Sprintf("SELECT count() FROM %s.events_raw", e.db)) < uint64(len(ps)) {
		if time.Now().After(deadline) || r.exited() {
			t.Fatalf("raw holds %d of %d rows (speed exited: %v, %v)", e.uint(fmt.Sprintf("SELECT count() FROM %s.events_raw", e.db)), len(ps), r.exited(), r.err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	e.requireIDs(want)
}

// TestWrongKafkaPassword: a refused login stops the layer at start with one line that names
// the broker and the cause, rather than retrying forever.
func TestWrongKafkaPassword(t *testing.T) {
	e := newSecureEnv(t, "wrong")
	r := e.speed("refused", nil)
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the speed layer still runs with a wrong password")
	}
	want := fmt.Sprintf(`speed: kafka %s: SASL authentication failed (SCRAM-SHA-512 as "speed"): the broker closed the connection`, e.cfg.Kafka.Brokers[0])
	if r.err == nil || !strings.HasPrefix(r.err.Error(), want) || strings.Contains(r.err.Error(), "\n") {
		t.Errorf("got %v\nwant %s…", r.err, want)
	}
}
