package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
)

// TLS configures the client side of a TLS connection (clickhouse.tls, kafka.tls).
type TLS struct {
	Enabled bool `yaml:"enabled"`
	// CAFile holds the PEM certificates that are trusted to sign the server's certificate; the
	// system's roots when empty.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate and its key (PEM), for servers that
	// require one (mutual TLS); both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// ServerName is the name the server's certificate must carry; the host of the address
	// when empty.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any server certificate: encryption without authentication,
	// for tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// SASL configures SASL authentication to Kafka (kafka.sasl).
type SASL struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty disables SASL.
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
	// PasswordFile names a file holding the password; one trailing newline is ignored. Load
	// reads it into Password.
	PasswordFile string `yaml:"password_file"`
}

// SASL mechanisms.
const (
	Plain       = "PLAIN"
	ScramSHA256 = "SCRAM-SHA-256"
	ScramSHA512 = "SCRAM-SHA-512"
)

// Mechanisms lists the SASL mechanisms the platform speaks.
var Mechanisms = []string{Plain, ScramSHA256, ScramSHA512}

// Config returns the crypto/tls client configuration: nil when TLS is not enabled. It reads
// the CA, certificate and key files.
func (t TLS) Config() (*tls.Config, error) {
	if !t.Enabled {
		return nil, nil
	}
	c := &tls.Config{ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify, MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ca_file: %s holds no PEM certificate", t.CAFile)
		}
	}
	switch {
	case t.CertFile != "" && t.KeyFile != "":
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("cert_file, key_file: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	case t.CertFile != "":
		return nil, errors.New("key_file: a cert_file needs its key_file")
	case t.KeyFile != "":
		return nil, errors.New("cert_file: a key_file needs its cert_file")
	}
	return c, nil
}

// readSecret returns the content of a secret file without one trailing newline.
func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSuffix(string(b), "\n")
	return strings.TrimSuffix(s, "\r"), nil
}

// secureProblems checks the TLS and SASL settings and, when readFiles, reads the password files
// into the passwords and checks that the TLS files load.
func (c *Config) secureProblems(readFiles bool) []Problem {
	var ps []Problem
	add := func(field, format string, args ...any) {
		ps = append(ps, Problem{Field: field, Msg: fmt.Sprintf(format, args...)})
	}
	tlsCheck := func(p string, t TLS) {
		if !t.Enabled {
			if c.FromEnv(p+".enabled") != "" {
				// Switched off by the environment on purpose.
				return
			}
			for _, f := range []struct {
				key string
				set bool
			}{{"ca_file", t.CAFile != ""}, {"cert_file", t.CertFile != ""}, {"key_file", t.KeyFile != ""},
				{"server_name", t.ServerName != ""}, {"insecure_skip_verify", t.InsecureSkipVerify}} {
				if f.set {
					add(p+"."+f.key, "is set but %s.enabled is false: set enabled: true, or remove it", p)
				}
			}
			return
		}
		if (t.CertFile == "") != (t.KeyFile == "") {
			if t.CertFile == "" {
				add(p+".cert_file", "a key_file needs its cert_file")
			} else {
				add(p+".key_file", "a cert_file needs its key_file")
			}
			return
		}
		if !readFiles {
			return
		}
		if _, err := t.Config(); err != nil {
			field, msg, ok := strings.Cut(err.Error(), ": ")
			if !ok || strings.Contains(field, " ") {
				field, msg = "", err.Error()
			}
			if i := strings.Index(field, ","); i >= 0 {
				field = field[:i]
			}
			add(strings.TrimSuffix(p+"."+field, "."), "%s", msg)
		}
	}
	secret := func(p string, password *string, file string) {
		if file == "" || !readFiles {
			return
		}
		s, err := readSecret(file)
		switch {
		case err != nil:
			add(p+".password_file", "%v", err)
		case s == "":
			add(p+".password_file", "%s is empty", file)
		default:
			*password = s
		}
	}
	ch := &c.ClickHouse
	if ch.Password != "" && ch.PasswordFile != "" {
		add("clickhouse.password_file", "set password or password_file, not both")
	}
	secret("clickhouse", &ch.Password, ch.PasswordFile)
	tlsCheck("clickhouse.tls", ch.TLS)

	k := &c.Kafka
	tlsCheck("kafka.tls", k.TLS)
	s := &k.SASL
	if s.Password != "" && s.PasswordFile != "" {
		add("kafka.sasl.password_file", "set password or password_file, not both")
	}
	secret("kafka.sasl", &s.Password, s.PasswordFile)
	if s.Mechanism == "" {
		if s.Username != "" || s.Password != "" || s.PasswordFile != "" {
			add("kafka.sasl.mechanism", "credentials are set but no mechanism: use one of %s", strings.Join(Mechanisms, ", "))
		}
		return ps
	}
	if m := strings.ToUpper(s.Mechanism); m != s.Mechanism && isMechanism(m) {
		s.Mechanism = m
	}
	if !isMechanism(s.Mechanism) {
		add("kafka.sasl.mechanism", "unknown mechanism %q (use %s)", s.Mechanism, strings.Join(Mechanisms, ", "))
	}
	if s.Username == "" {
		add("kafka.sasl.username", "SASL %s needs a username", s.Mechanism)
	}
	if s.Password == "" && s.PasswordFile == "" {
		add("kafka.sasl.password", "SASL %s needs a password: set password_file, or LAMBDA_KAFKA_SASL_PASSWORD", s.Mechanism)
	}
	return ps
}

func isMechanism(m string) bool {
	for _, x := range Mechanisms {
		if m == x {
			return true
		}
	}
	return false
}
