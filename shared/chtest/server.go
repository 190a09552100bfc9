package chtest

import (
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// ServerOptions configure a private server.
type ServerOptions struct {
	// CertFile and KeyFile, when set, make the server also serve the native protocol over TLS
	// (tcp_port_secure) with this certificate and key.
	CertFile, KeyFile string
}

// Server is a private ClickHouse server of one test.
type Server struct {
	// Addr is the plain native port, SecureAddr the TLS one ("" without a certificate).
	Addr, SecureAddr string
}

// StartServer starts a ClickHouse server of the test's own, with deploy/local/clickhouse.sh
// (the package `make test` installs) on free ports and a data folder in the test's temporary
// folder, and stops it when the test ends. For what the shared server cannot do: a TLS port,
// a server that goes away.
func StartServer(t testing.TB, o ServerOptions) *Server {
	t.Helper()
	ports := freePorts(t, 4)
	dir := t.TempDir()
	env := []string{
		"CH_DATA_DIR=" + filepath.Join(dir, "clickhouse"),
		"CH_TCP_PORT=" + ports[0], "CH_HTTP_PORT=" + ports[1], "CH_INTERSERVER_PORT=" + ports[2],
	}
	s := &Server{Addr: "127.0.0.1:" + ports[0]}
	if o.CertFile != "" {
		env = append(env, "CH_TCP_PORT_SECURE="+ports[3], "CH_TLS_CERT="+o.CertFile, "CH_TLS_KEY="+o.KeyFile)
		s.SecureAddr = "127.0.0.1:" + ports[3]
	}
	script := localScript("clickhouse.sh")
	run := func(arg string) (string, error) {
		cmd := exec.Command(script, arg)
		cmd.Env = append(cmd.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	if out, err := run("start"); err != nil {
		t.Fatalf("cannot start a private clickhouse server: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := run("stop"); err != nil {
			t.Logf("cannot stop the private clickhouse server: %v\n%s", err, out)
		}
	})
	return s
}

func localScript(name string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "deploy", "local", name)
}

// freePorts returns n ports that were free a moment ago.
func freePorts(t testing.TB, n int) []string {
	t.Helper()
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	}
	for _, ln := range lns {
		_ = ln.Close()
	}
	return out
}
