package chconn_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/lambda-platform/lambda/shared/chconn"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/nettest"
)

// TestTLS runs a private ClickHouse 18.16 with tcp_port_secure and a certificate the test
// generated, and connects to it over TLS, with the failures a user meets named in one line.
func TestTLS(t *testing.T) {
	certs := nettest.NewCerts(t)
	srv := chtest.StartServer(t, chtest.ServerOptions{CertFile: certs.CertFile, KeyFile: certs.KeyFile})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The password comes from a file, as a mounted secret would.
	secret := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(secret, []byte("analyst\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("tls.yaml", []byte(`
clickhouse:
  addr: [`+srv.SecureAddr+`]
  username: analyst
  password_file: `+secret+`
  tls: {enabled: true, ca_file: `+certs.CAFile+`}
datasets:
  - {name: events, topic: events, id_field: id, time_field: ts, dimensions: [{name: country}], metrics: [{name: events, type: count}]}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := chconn.Open(ctx, cfg.ClickHouse)
	if err != nil {
		t.Fatalf("trusted certificate: %v", err)
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM (SELECT number FROM system.numbers LIMIT 100000)").Scan(&n); err != nil {
		t.Fatal(err)
	}
	_ = conn.Close()
	if n != 100000 {
		t.Errorf("over TLS: count %d", n)
	}

	// Writes over TLS, as the default user.
	def := cfg.ClickHouse
	def.Username, def.Password = "default", ""
	conn, err = chconn.Open(ctx, def)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Exec(ctx, "CREATE TABLE default.tls_rows (n UInt64) ENGINE = Memory"); err != nil {
		t.Fatal(err)
	}
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO default.tls_rows (n)")
	if err != nil {
		t.Fatal(err)
	}
	col := make([]uint64, 50000)
	for i := range col {
		col[i] = uint64(i)
	}
	if err := batch.Column(0).Append(col); err != nil {
		t.Fatal(err)
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT sum(n) FROM default.tls_rows").Scan(&n); err != nil || n != 49999*50000/2 {
		t.Errorf("sum over TLS: %d, %v", n, err)
	}

	f := func(name string, c config.ClickHouse, want string, permanent bool) {
		t.Helper()
		c.DialTimeout = config.Duration(5 * time.Second)
		conn, err := chconn.Open(ctx, c)
		if err == nil {
			_ = conn.Close()
		}
		if err == nil || err.Error() != want || chconn.IsPermanent(err) != permanent {
			t.Errorf("%s:\n got %v (permanent %v)\nwant %s", name, err, chconn.IsPermanent(err), want)
		}
	}
	c := cfg.ClickHouse
	c.TLS.CAFile = certs.OtherCAFile
	f("untrusted certificate", c, "clickhouse "+srv.SecureAddr+": tls: certificate signed by unknown authority (set clickhouse.tls.ca_file to the CA that signed the server's certificate)", true)
	c = cfg.ClickHouse
	c.TLS.ServerName = "clickhouse.example"
	f("server name", c, "clickhouse "+srv.SecureAddr+": tls: certificate is valid for localhost, not clickhouse.example (set clickhouse.tls.server_name to a name the certificate carries)", true)
	c = cfg.ClickHouse
	c.Password = "wrong"
	f("wrong password", c, "clickhouse "+srv.SecureAddr+`: login refused for user "analyst": Wrong password for user analyst (code 193) (check clickhouse.username and the password)`, true)
	c = cfg.ClickHouse
	c.Addr = []string{srv.Addr}
	f("TLS to the plain port", c, "clickhouse "+srv.Addr+": tls: the server does not speak TLS (clickhouse.tls.enabled is set: is this the plain native port (9000) rather than the secure one (9440)?)", true)
	c = cfg.ClickHouse
	c.TLS = config.TLS{}
	f("plaintext to the secure port", c, "clickhouse "+srv.SecureAddr+": the server closed the connection at the hello (is this the secure port? set clickhouse.tls.enabled)", false)
}
