// Package connerr is a failed connection to ClickHouse or Kafka said in a user's words: what
// failed, whether retrying can help, and which setting to look at. shared/chconn and
// shared/kafkaconn classify their clients' errors into it.
package connerr

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// Error is a failed connection to a server, with what it means.
type Error struct {
	// System names the server's kind in the message: "clickhouse", "kafka".
	System string
	Addr   string
	Err    error
	// Permanent says the failure is a setting (TLS, credentials), not a passing outage:
	// retrying cannot help.
	Permanent bool
	// Hint is the setting to look at, "" when there is nothing to suggest.
	Hint string
}

// Error formats the failure in one line: `SYSTEM ADDR: WHAT (HINT)`.
func (e *Error) Error() string {
	s := e.System + " " + e.Addr + ": " + e.Err.Error()
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// IsPermanent reports whether err holds an *Error that retrying cannot fix.
func IsPermanent(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Permanent
}

// TLS classifies a failed TLS handshake, setting e's message, permanence and hint; it reports
// false, leaving e as it is, when err is not one. tlsKey is the TLS settings' key
// ("clickhouse.tls"), peer what the hints call the server ("server", "broker"), plainHint
// what to say when the server does not speak TLS at all.
func TLS(e *Error, err error, tlsKey, peer, plainHint string) bool {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		header    tls.RecordHeaderError
		alert     tls.AlertError
	)
	switch {
	case errors.As(err, &unknownCA):
		e.Err, e.Hint = errors.New("tls: certificate signed by unknown authority"), "set "+tlsKey+".ca_file to the CA that signed the "+peer+"'s certificate"
	case errors.As(err, &hostname):
		e.Err, e.Hint = errors.New("tls: "+strings.TrimPrefix(hostname.Error(), "x509: ")), "set "+tlsKey+".server_name to a name the certificate carries"
	case errors.As(err, &invalid):
		e.Err = errors.New("tls: " + strings.TrimPrefix(invalid.Error(), "x509: "))
	case errors.As(err, &header):
		e.Err, e.Hint = errors.New("tls: the server does not speak TLS"), plainHint
	case errors.As(err, &alert):
		e.Err = fmt.Errorf("tls: the server refused the handshake: %w", alert)
	default:
		return false
	}
	e.Permanent = true
	return true
}
