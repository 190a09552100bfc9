package kafkaconn_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/lambda-platform/lambda/shared/broker"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/kafkaconn"
	"github.com/lambda-platform/lambda/shared/nettest"
)

func start(t *testing.T, o broker.Options) string {
	t.Helper()
	o.Listen = "127.0.0.1:0"
	o.Topics = []string{"t"}
	b, err := broker.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b.Addr()
}

// check runs Check with a short dial timeout (a TLS handshake nobody answers waits for it).
func check(t *testing.T, k config.Kafka) error {
	t.Helper()
	k.Version = "2.8.0"
	sc, err := kafkaconn.Config(k, "test")
	if err != nil {
		t.Fatal(err)
	}
	sc.Net.DialTimeout = 2 * time.Second
	return kafkaconn.Check(context.Background(), k, sc)
}

// roundTrip produces a record and consumes it back through clients configured by k.
func roundTrip(t *testing.T, k config.Kafka) {
	t.Helper()
	k.Version = "2.8.0"
	sc, err := kafkaconn.Config(k, "test")
	if err != nil {
		t.Fatal(err)
	}
	sc.Producer.Return.Successes = true
	p, err := sarama.NewSyncProducer(k.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	want := fmt.Sprintf("hello %d", time.Now().UnixNano())
	part, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: "t", Value: sarama.StringEncoder(want)})
	if err != nil {
		t.Fatal(err)
	}
	c, err := sarama.NewConsumer(k.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc, err := c.ConsumePartition("t", part, off)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	select {
	case m := <-pc.Messages():
		if string(m.Value) != want {
			t.Fatalf("consumed %q, want %q", m.Value, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no record consumed")
	}
}

func TestSASL(t *testing.T) {
	for _, mech := range config.Mechanisms {
		t.Run(mech, func(t *testing.T) {
			addr := start(t, broker.Options{RequireSASL: true, Users: []broker.User{{Mechanism: mech, Name: "alice", Password: "s3cret"}}})
			k := config.Kafka{Brokers: []string{addr}, SASL: config.SASL{Mechanism: mech, Username: "alice", Password: "s3cret"}}
			if err := check(t, k); err != nil {
				t.Fatalf("right password: %v", err)
			}
			roundTrip(t, k)

			bad := k
			bad.SASL.Password = "wrong"
			err := check(t, bad)
			want := fmt.Sprintf(`kafka %s: SASL authentication failed (%s as "alice"): the broker closed the connection (check kafka.sasl.username, the password and the mechanism)`, addr, mech)
			if err == nil || err.Error() != want || !kafkaconn.IsPermanent(err) {
				t.Errorf("wrong password:\n got %v\nwant %s", err, want)
			}

			none := config.Kafka{Brokers: []string{addr}}
			err = check(t, none)
			want = fmt.Sprintf(`kafka %s: the broker closed the connection at the first request (does the listener need TLS or SASL? set kafka.tls or kafka.sasl)`, addr)
			if err == nil || err.Error() != want || !kafkaconn.IsPermanent(err) {
				t.Errorf("no SASL:\n got %v\nwant %s", err, want)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	certs := nettest.NewCerts(t)
	users := []broker.User{{Mechanism: config.ScramSHA512, Name: "svc", Password: "pw"}}
	addr := start(t, broker.Options{TLS: certs.Server, Users: users, RequireSASL: true})
	plain := start(t, broker.Options{})
	sasl := config.SASL{Mechanism: config.ScramSHA512, Username: "svc", Password: "pw"}
	trusted := config.TLS{Enabled: true, CAFile: certs.CAFile}

	k := config.Kafka{Brokers: []string{addr}, TLS: trusted, SASL: sasl}
	if err := check(t, k); err != nil {
		t.Fatalf("trusted: %v", err)
	}
	roundTrip(t, k)

	f := func(name string, k config.Kafka, want string, permanent bool) {
		t.Helper()
		err := check(t, k)
		if err == nil || err.Error() != want || kafkaconn.IsPermanent(err) != permanent {
			t.Errorf("%s:\n got %v (permanent %v)\nwant %s", name, err, kafkaconn.IsPermanent(err), want)
		}
	}
	f("untrusted", config.Kafka{Brokers: []string{addr}, TLS: config.TLS{Enabled: true, CAFile: certs.OtherCAFile}, SASL: sasl},
		"kafka "+addr+": tls: certificate signed by unknown authority (set kafka.tls.ca_file to the CA that signed the broker's certificate)", true)
	f("system roots", config.Kafka{Brokers: []string{addr}, TLS: config.TLS{Enabled: true}, SASL: sasl},
		"kafka "+addr+": tls: certificate signed by unknown authority (set kafka.tls.ca_file to the CA that signed the broker's certificate)", true)
	f("server name", config.Kafka{Brokers: []string{addr}, TLS: config.TLS{Enabled: true, CAFile: certs.CAFile, ServerName: "kafka.example"}, SASL: sasl},
		"kafka "+addr+": tls: certificate is valid for localhost, not kafka.example (set kafka.tls.server_name to a name the certificate carries)", true)
	f("plaintext to the TLS listener", config.Kafka{Brokers: []string{addr}, SASL: sasl},
		"kafka "+addr+`: SASL authentication failed (SCRAM-SHA-512 as "svc"): the broker closed the connection (check kafka.sasl.username, the password and the mechanism)`, true)
	f("TLS to a plaintext listener", config.Kafka{Brokers: []string{plain}, TLS: trusted},
		"kafka "+plain+": tls: no answer to the TLS handshake (kafka.tls.enabled is set: is this the broker's plaintext listener?)", true)
	f("nobody listens", config.Kafka{Brokers: []string{"127.0.0.1:1"}},
		"kafka 127.0.0.1:1: cannot connect: connect: connection refused", false)
	// The first broker that works is enough.
	if err := check(t, config.Kafka{Brokers: []string{"127.0.0.1:1", addr}, TLS: trusted, SASL: sasl}); err != nil {
		t.Errorf("second broker works: %v", err)
	}
	if _, err := kafkaconn.Config(config.Kafka{TLS: config.TLS{Enabled: true, CAFile: "/nonexistent/ca.pem"}}, "x"); err == nil ||
		!strings.Contains(err.Error(), "kafka.tls.ca_file: open /nonexistent/ca.pem") {
		t.Errorf("missing CA file: %v", err)
	}
}
