package chconn

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/ClickHouse/clickhouse-go/v2/lib/proto"

	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/connerr"
)

// Error is a failed connection to ClickHouse, with what it means.
type Error = connerr.Error

// IsPermanent reports whether err holds an *Error that retrying cannot fix.
func IsPermanent(err error) bool { return connerr.IsPermanent(err) }

// Server error codes of a refused login: UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD
// (18.16) and AUTHENTICATION_FAILED (later versions).
var authCodes = map[int32]bool{192: true, 193: true, 194: true, 516: true}

// Explain turns the error of a connection to addr into an *Error that says what failed: the
// TLS handshake (and why), the login, or reaching the server.
func Explain(addr string, c config.ClickHouse, err error) *Error {
	e := &Error{System: "clickhouse", Addr: addr, Err: err}
	plain := "clickhouse.tls.enabled is set: is this the plain native port (9000) rather than the secure one (9440)?"
	if connerr.TLS(e, err, "clickhouse.tls", "server", plain) {
		return e
	}
	var (
		exc    *proto.Exception
		netErr *net.OpError
	)
	switch {
	case errors.As(err, &exc) && authCodes[exc.Code]:
		e.Err, e.Permanent = fmt.Errorf("login refused for user %q: %s (code %d)", c.Username, firstLine(exc.Message), exc.Code), true
		e.Hint = "check clickhouse.username and the password"
	case errors.As(err, &netErr) && netErr.Op == "dial":
		e.Err = fmt.Errorf("cannot connect: %w", netErr.Err)
	case !c.TLS.Enabled && (errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)) && strings.Contains(err.Error(), "handshake"):
		// A TLS port resets a plaintext hello; a restarting server may too, so it is retried.
		e.Err = errors.New("the server closed the connection at the hello")
		e.Hint = "is this the secure port? set clickhouse.tls.enabled"
	}
	return e
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
