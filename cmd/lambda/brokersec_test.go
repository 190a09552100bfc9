package main

import (
	"context"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/broker"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/kafkaconn"
	"github.com/lambda-platform/lambda/shared/nettest"
)

// TestBrokerSecurity: `lambda broker --require-sasl --tls-cert … --tls-key …` serves what a
// client configured with kafka.tls and kafka.sasl expects, and refuses one without SASL.
func TestBrokerSecurity(t *testing.T) {
	certs := nettest.NewCerts(t)
	fs := flag.NewFlagSet("broker", flag.ContinueOnError)
	sec := addBrokerSecurityFlags(fs)
	if err := fs.Parse([]string{"--require-sasl", "--tls-cert", certs.CertFile, "--tls-key", certs.KeyFile}); err != nil {
		t.Fatal(err)
	}
	k := config.Kafka{TLS: config.TLS{Enabled: true, CAFile: certs.CAFile},
		SASL: config.SASL{Mechanism: config.ScramSHA256, Username: "dev", Password: "pw"}}
	o := broker.Options{Listen: "127.0.0.1:0", Topics: []string{"events"}}
	if err := sec.apply(&o, k); err != nil {
		t.Fatal(err)
	}
	b, err := broker.Start(o)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	k.Brokers = []string{b.Addr()}
	check := func(k config.Kafka) error {
		sc, err := kafkaconn.Config(k, "test")
		if err != nil {
			t.Fatal(err)
		}
		sc.Net.DialTimeout = 5 * time.Second
		return kafkaconn.Check(context.Background(), k, sc)
	}
	if err := check(k); err != nil {
		t.Errorf("configured client: %v", err)
	}
	anon := k
	anon.SASL = config.SASL{}
	if err := check(anon); err == nil || !kafkaconn.IsPermanent(err) {
		t.Errorf("client without SASL: %v", err)
	}

	// --require-sasl needs a user.
	fs = flag.NewFlagSet("broker", flag.ContinueOnError)
	sec = addBrokerSecurityFlags(fs)
	_ = fs.Parse([]string{"--require-sasl"})
	if err := sec.apply(&broker.Options{}, config.Kafka{}); err == nil || !strings.Contains(err.Error(), "set kafka.sasl") {
		t.Errorf("--require-sasl without kafka.sasl: %v", err)
	}
}
