package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"

	"github.com/lambda-platform/lambda/shared/broker"
	"github.com/lambda-platform/lambda/shared/config"
)

// brokerSecurity holds the flags that make the embedded broker (broker, dev) speak TLS and
// require SASL.
type brokerSecurity struct {
	requireSASL     *bool
	tlsCert, tlsKey *string
}

func addBrokerSecurityFlags(fs *flag.FlagSet) *brokerSecurity {
	return &brokerSecurity{
		requireSASL: fs.Bool("require-sasl", false, "refuse clients that do not authenticate with SASL as the user of kafka.sasl (mechanism, username, password)"),
		tlsCert:     fs.String("tls-cert", "", "serve TLS only, with this certificate (PEM); with --tls-key"),
		tlsKey:      fs.String("tls-key", "", "the key of --tls-cert (PEM)"),
	}
}

// apply sets the broker's users and TLS from the flags and the configuration: the user of
// kafka.sasl is always known to the broker (so that clients configured with it work), and
// required with --require-sasl.
func (b *brokerSecurity) apply(o *broker.Options, k config.Kafka) error {
	if s := k.SASL; s.Mechanism != "" {
		o.Users = append(o.Users, broker.User{Mechanism: s.Mechanism, Name: s.Username, Password: s.Password})
	}
	if *b.requireSASL {
		if len(o.Users) == 0 {
			return errors.New("--require-sasl: set kafka.sasl (mechanism, username and a password) for the broker's user")
		}
		o.RequireSASL = true
	}
	if (*b.tlsCert == "") != (*b.tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	if *b.tlsCert != "" {
		pair, err := tls.LoadX509KeyPair(*b.tlsCert, *b.tlsKey)
		if err != nil {
			return fmt.Errorf("--tls-cert, --tls-key: %w", err)
		}
		o.TLS = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	return nil
}
