package connerr

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"testing"
)

func TestError(t *testing.T) {
	e := &Error{System: "kafka", Addr: "b:9093", Err: io.EOF}
	if !TLS(e, fmt.Errorf("handshake: %w", x509.UnknownAuthorityError{}), "kafka.tls", "broker", "plain?") {
		t.Fatal("an unknown authority is not a TLS failure")
	}
	want := "kafka b:9093: tls: certificate signed by unknown authority (set kafka.tls.ca_file to the CA that signed the broker's certificate)"
	if e.Error() != want {
		t.Errorf("got %q\nwant %q", e.Error(), want)
	}
	if !IsPermanent(fmt.Errorf("open: %w", e)) {
		t.Error("a TLS failure is not permanent")
	}
	other := &Error{System: "clickhouse", Addr: "c:9000", Err: io.EOF}
	if TLS(other, io.EOF, "clickhouse.tls", "server", "plain?") || other.Permanent || other.Err != io.EOF {
		t.Errorf("EOF taken for a TLS failure: %+v", other)
	}
	if IsPermanent(other) || IsPermanent(errors.New("x")) {
		t.Error("a passing failure is permanent")
	}
	if got := other.Error(); got != "clickhouse c:9000: EOF" {
		t.Errorf("without a hint: %q", got)
	}
}
