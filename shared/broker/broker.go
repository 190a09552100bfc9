// Package broker runs the embedded Kafka-compatible broker (github.com/twmb/franz-go/pkg/kfake)
// for development and tests. Production uses real Kafka; nothing else in the platform knows
// which one it talks to.
package broker

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"github.com/twmb/franz-go/pkg/kfake"
)

// Options configure the broker.
type Options struct {
	// Listen is host:port; port 0 picks a free port.
	Listen string
	// Partitions is the partition count of every seeded topic.
	Partitions int32
	// Topics are created at start.
	Topics []string
	// DataDir, when set, persists the log so that a restarted broker keeps its data.
	DataDir string
	// Users are the SASL users a client may authenticate as (each a superuser).
	Users []User
	// RequireSASL refuses clients that do not authenticate as one of Users.
	RequireSASL bool
	// TLS, when set, makes the broker speak TLS only, with this server configuration (a
	// certificate and its key).
	TLS    *tls.Config
	Logger *slog.Logger
}

// User is a SASL user of the broker.
type User struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512: the one the user authenticates with.
	Mechanism string
	Name      string
	Password  string
}

// Broker is a running embedded broker.
type Broker struct {
	c      *kfake.Cluster
	addr   string
	reaper *sessionReaper
}

// Start starts the broker and returns once it accepts connections.
func Start(o Options) (*Broker, error) {
	host, portStr, err := net.SplitHostPort(o.Listen)
	if err != nil {
		return nil, fmt.Errorf("invalid listen address %q: %w", o.Listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("invalid listen port %q: %w", portStr, err)
	}
	if o.Partitions <= 0 {
		o.Partitions = 1
	}
	opts := []kfake.Opt{
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, net.JoinHostPort(host, strconv.Itoa(port)))
		}),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(int(o.Partitions)),
	}
	if len(o.Topics) > 0 {
		opts = append(opts, kfake.SeedTopics(o.Partitions, o.Topics...))
	}
	if o.DataDir != "" {
		opts = append(opts, kfake.DataDir(o.DataDir))
	}
	if o.RequireSASL {
		if len(o.Users) == 0 {
			return nil, errors.New("a broker that requires SASL needs a user")
		}
		opts = append(opts, kfake.EnableSASL())
	}
	for _, u := range o.Users {
		opts = append(opts, kfake.Superuser(u.Mechanism, u.Name, u.Password))
	}
	if o.TLS != nil {
		opts = append(opts, kfake.TLS(o.TLS))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot start broker on %s: %w", o.Listen, err)
	}
	b := &Broker{c: c, addr: c.ListenAddrs()[0]}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b.reaper = startSessionReaper(c, b.addr, log)
	if o.Logger != nil {
		var users []string
		for _, u := range o.Users {
			users = append(users, u.Name+" ("+u.Mechanism+")")
		}
		o.Logger.Info("broker listening", "addr", b.addr, "partitions", o.Partitions, "topics", o.Topics,
			"tls", o.TLS != nil, "require_sasl", o.RequireSASL, "sasl_users", users)
	}
	return b, nil
}

// Addr is the address clients bootstrap from.
func (b *Broker) Addr() string { return b.addr }

// Close stops the broker.
func (b *Broker) Close() {
	b.reaper.close()
	b.c.Close()
}
