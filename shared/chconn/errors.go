package chconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/lambda-platform/lambda/shared/config"
)

// Error is a failed connection to ClickHouse, with what it means.
type Error struct {
	Addr string
	Err  error
	// Permanent says the failure is a setting (TLS, credentials), not a passing outage:
	// retrying cannot help.
	Permanent bool
	hint      string
}

// Error formats the failure in one line: `clickhouse ADDR: WHAT (HINT)`.
func (e *Error) Error() string {
	s := "clickhouse " + e.Addr + ": " + e.Err.Error()
	if e.hint != "" {
		s += " (" + e.hint + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// IsPermanent reports whether err holds an *Error that retrying cannot fix.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent
}

// Server error codes of a refused login: UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD
// (18.16) and AUTHENTICATION_FAILED (later versions).
var authCodes = map[int32]bool{192: true, 193: true, 194: true, 516: true}

// Explain turns the error of a connection to addr into an *Error that says what failed: the
// TLS handshake (and why), the login, or reaching the server.
func Explain(addr string, c config.ClickHouse, err error) *Error {
	e := &Error{Addr: addr, Err: err}
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		header    tls.RecordHeaderError
		alert     tls.AlertError
		exc       *proto.Exception
		netErr    *net.OpError
	)
	plain := "clickhouse.tls.enabled is set: is this the plain native port (9000) rather than the secure one (9440)?"
	switch {
	case errors.As(err, &unknownCA):
		e.Err, e.Permanent = errors.New("tls: certificate signed by unknown authority"), true
		e.hint = "set clickhouse.tls.ca_file to the CA that signed the server's certificate"
	case errors.As(err, &hostname):
		e.Err, e.Permanent = errors.New("tls: "+strings.TrimPrefix(hostname.Error(), "x509: ")), true
		e.hint = "set clickhouse.tls.server_name to a name the certificate carries"
	case errors.As(err, &invalid):
		e.Err, e.Permanent = errors.New("tls: "+strings.TrimPrefix(invalid.Error(), "x509: ")), true
	case errors.As(err, &header):
		e.Err, e.Permanent = errors.New("tls: the server does not speak TLS"), true
		e.hint = plain
	case errors.As(err, &alert):
		e.Err, e.Permanent = fmt.Errorf("tls: the server refused the handshake: %w", alert), true
	case errors.As(err, &exc) && authCodes[exc.Code]:
		e.Err, e.Permanent = fmt.Errorf("login refused for user %q: %s (code %d)", c.Username, firstLine(exc.Message), exc.Code), true
		e.hint = "check clickhouse.username and the password"
	case errors.As(err, &netErr) && netErr.Op == "dial":
		e.Err = fmt.Errorf("cannot connect: %w", netErr.Err)
	case !c.TLS.Enabled && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)) && strings.Contains(err.Error(), "handshake"):
		// A TLS port resets a plaintext hello; a restarting server may too, so it is retried.
		e.Err = errors.New("the server closed the connection at the hello")
		e.hint = "is this the secure port? set clickhouse.tls.enabled"
	}
	return e
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
