// Package broker runs the embedded Kafka-compatible broker (github.com/twmb/franz-go/pkg/kfake)
// for development and tests. Production uses real Kafka; nothing else in the platform knows
// which one it talks to.
package broker

import (
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
	Logger  *slog.Logger
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
		o.Logger.Info("broker listening", "addr", b.addr, "partitions", o.Partitions, "topics", o.Topics)
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
