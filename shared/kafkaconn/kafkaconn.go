// Package kafkaconn builds the sarama configuration that every Kafka client of the platform
// starts from (the speed layer, the generator, dev, sample): protocol version, client id, TLS
// and SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) from the configuration's kafka section. Check
// tries the connection once and names what failed in one line, so that a wrong password or
// an untrusted certificate is said at start, not in an endless loop of client retries.
//
// SCRAM runs through franz-go's client implementation (github.com/twmb/franz-go/pkg/sasl/scram,
// already a dependency through the embedded broker) behind sarama's SCRAMClient interface.
// SASL uses the handshake v1 with SaslAuthenticate requests (Kafka 1.0 and later, and the
// embedded broker, which does not speak v0).
package kafkaconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/connerr"
)

// Config returns the sarama configuration of a client: the protocol version, clientID, TLS and
// SASL of k. Callers set what is their own (consumer, producer) on it.
func Config(k config.Kafka, clientID string) (*sarama.Config, error) {
	sc := sarama.NewConfig()
	sc.ClientID = clientID
	if k.Version != "" {
		v, err := sarama.ParseKafkaVersion(k.Version)
		if err != nil {
			return nil, fmt.Errorf("kafka.version: %w", err)
		}
		sc.Version = v
	} else {
		sc.Version = sarama.V2_8_0_0
	}
	tc, err := k.TLS.Config()
	if err != nil {
		return nil, fmt.Errorf("kafka.tls.%w", err)
	}
	if tc != nil {
		sc.Net.TLS.Enable = true
		sc.Net.TLS.Config = tc
	}
	s := k.SASL
	if s.Mechanism == "" {
		return sc, nil
	}
	if !sc.Version.IsAtLeast(sarama.V1_0_0_0) {
		return nil, fmt.Errorf("kafka.sasl: needs kafka.version 1.0.0 or later, got %s", sc.Version)
	}
	sc.Net.SASL.Enable = true
	sc.Net.SASL.Handshake = true
	sc.Net.SASL.Version = sarama.SASLHandshakeV1
	sc.Net.SASL.User = s.Username
	sc.Net.SASL.Password = s.Password
	switch strings.ToUpper(s.Mechanism) {
	case config.Plain:
		sc.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case config.ScramSHA256:
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient {
			return &scramClient{mech: func(a scram.Auth) sasl.Mechanism { return a.AsSha256Mechanism() }}
		}
	case config.ScramSHA512:
		sc.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		sc.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient {
			return &scramClient{mech: func(a scram.Auth) sasl.Mechanism { return a.AsSha512Mechanism() }}
		}
	default:
		return nil, fmt.Errorf("kafka.sasl.mechanism: unknown mechanism %q (use %s)", s.Mechanism, strings.Join(config.Mechanisms, ", "))
	}
	return sc, nil
}

// scramClient is sarama's SCRAMClient over franz-go's SCRAM session: Step("") returns the
// client-first message, Step(server-first) the client-final one, and Step(server-final)
// verifies the server's signature.
type scramClient struct {
	mech    func(scram.Auth) sasl.Mechanism
	user    string
	pass    string
	authzID string
	session sasl.Session
	first   []byte
	done    bool
}

func (c *scramClient) Begin(user, pass, authzID string) error {
	c.user, c.pass, c.authzID = user, pass, authzID
	s, first, err := c.mech(scram.Auth{User: user, Pass: pass, Zid: authzID}).Authenticate(context.Background(), "")
	if err != nil {
		return err
	}
	c.session, c.first = s, first
	return nil
}

func (c *scramClient) Step(challenge string) (string, error) {
	if c.first != nil {
		first := c.first
		c.first = nil
		return string(first), nil
	}
	done, msg, err := c.session.Challenge([]byte(challenge))
	if err != nil {
		return "", err
	}
	c.done = done
	return string(msg), nil
}

func (c *scramClient) Done() bool { return c.done }

// Error is a failed connection to a broker, with what it means.
type Error = connerr.Error

// IsPermanent reports whether err holds an *Error that retrying cannot fix.
func IsPermanent(err error) bool { return connerr.IsPermanent(err) }

// Check connects to the bootstrap brokers in turn (dial, TLS handshake, SASL authentication,
// a metadata request) and returns nil at the first that works. Otherwise it returns the
// *Error of a permanent failure if there was one (a TLS or SASL setting), else that of the
// last broker. Cancelling ctx abandons the check.
func Check(ctx context.Context, k config.Kafka, sc *sarama.Config) error {
	// A server that takes the connection but never answers the TLS handshake (a plaintext
	// listener) is told within the dial timeout, not the read timeout.
	c := *sc
	c.Net.ReadTimeout = min(c.Net.ReadTimeout, c.Net.DialTimeout)
	sc = &c
	var last error
	for _, addr := range k.Brokers {
		err := checkBroker(ctx, addr, k, sc)
		if err == nil {
			return nil
		}
		if IsPermanent(err) || ctx.Err() != nil {
			return err
		}
		last = err
	}
	if last == nil {
		return errors.New("kafka: no broker configured")
	}
	return last
}

// stage is how far a connection got when it failed.
type stage int

const (
	stageTLS     stage = iota // the TLS handshake
	stageConnect              // dial and SASL
	stageRequest              // the first request, once connected
)

func checkBroker(ctx context.Context, addr string, k config.Kafka, sc *sarama.Config) error {
	// sarama shakes hands lazily, in the first write: a separate handshake tells TLS
	// failures from what follows.
	if sc.Net.TLS.Enable {
		if err := handshake(ctx, addr, sc.Net.TLS.Config, min(sc.Net.DialTimeout, 10*time.Second)); err != nil {
			return classify(addr, k, err, stageTLS)
		}
	}
	b := sarama.NewBroker(addr)
	type result struct {
		err   error
		stage stage
	}
	done := make(chan result, 1)
	go func() {
		if err := b.Open(sc); err != nil {
			done <- result{err, stageConnect}
			return
		}
		// Connected waits for the connection attempt (dial, SASL) that Open started.
		if ok, err := b.Connected(); !ok {
			if err == nil {
				err = errors.New("not connected")
			}
			done <- result{err, stageConnect}
			return
		}
		_, err := b.GetMetadata(&sarama.MetadataRequest{Version: 1})
		done <- result{err, stageRequest}
	}()
	var r result
	select {
	case r = <-done:
	case <-ctx.Done():
		go func() { <-done; _ = b.Close() }()
		return &Error{System: "kafka", Addr: addr, Err: ctx.Err()}
	}
	_ = b.Close()
	if r.err == nil {
		return nil
	}
	return classify(addr, k, r.err, r.stage)
}

// handshake dials addr and completes a TLS handshake within timeout.
func handshake(ctx context.Context, addr string, tc *tls.Config, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	c := tc.Clone()
	if c.ServerName == "" {
		if host, _, err := net.SplitHostPort(addr); err == nil {
			c.ServerName = host
		}
	}
	return tls.Client(conn, c).HandshakeContext(ctx)
}

// classify turns the error of a connection to addr into an *Error that says what failed: the
// TLS handshake (and why), the SASL authentication, or reaching the broker.
func classify(addr string, k config.Kafka, err error, st stage) *Error {
	e := &Error{System: "kafka", Addr: addr, Err: err}
	plaintext := "kafka.tls.enabled is set: is this the broker's plaintext listener?"
	if connerr.TLS(e, err, "kafka.tls", "broker", plaintext) {
		return e
	}
	var (
		kerr   sarama.KError
		netErr *net.OpError
	)
	s := k.SASL
	who := fmt.Sprintf("%s as %q", s.Mechanism, s.Username)
	switch {
	case errors.As(err, &kerr) && (kerr == sarama.ErrSASLAuthenticationFailed || kerr == sarama.ErrIllegalSASLState):
		e.Err, e.Permanent = fmt.Errorf("SASL authentication failed (%s): %w", who, err), true
		e.Hint = "check kafka.sasl.username and the password"
	case errors.As(err, &kerr) && kerr == sarama.ErrUnsupportedSASLMechanism:
		e.Err, e.Permanent = fmt.Errorf("SASL mechanism %s is not enabled on the broker", s.Mechanism), true
	case s.Mechanism != "" && strings.Contains(err.Error(), "SCRAM"):
		e.Err, e.Permanent = fmt.Errorf("SASL authentication failed (%s): %w", who, err), true
	case errors.As(err, &netErr) && netErr.Op == "dial":
		e.Err = fmt.Errorf("cannot connect: %w", netErr.Err)
	case st == stageTLS && (errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout()):
		// The server took the connection but did not answer the ClientHello.
		e.Err, e.Permanent = errors.New("tls: no answer to the TLS handshake"), true
		e.Hint = plaintext
	case st == stageTLS && isClosed(err):
		e.Err, e.Permanent = errors.New("tls: the server closed the connection during the handshake"), true
		e.Hint = plaintext
	case isClosed(err) && st == stageConnect && s.Mechanism != "":
		e.Err, e.Permanent = fmt.Errorf("SASL authentication failed (%s): the broker closed the connection", who), true
		e.Hint = "check kafka.sasl.username, the password and the mechanism"
	case isClosed(err) && st == stageRequest:
		e.Err, e.Permanent = errors.New("the broker closed the connection at the first request"), true
		e.Hint = "does the listener need TLS or SASL? set kafka.tls or kafka.sasl"
	case !k.TLS.Enabled && isGarbage(err):
		e.Err, e.Permanent = fmt.Errorf("the answer is not Kafka's: %w", err), true
		e.Hint = "is this a TLS listener? set kafka.tls.enabled"
	}
	return e
}

func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed)
}

func isGarbage(err error) bool {
	var pde sarama.PacketDecodingError
	return errors.As(err, &pde) || errors.Is(err, sarama.ErrInsufficientData)
}
