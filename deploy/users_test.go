package deploy_test

import (
	"encoding/xml"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

// ClickHouse users.xml: only what the checks read.
type usersFile struct {
	XMLName  xml.Name
	Profiles struct {
		List []struct {
			XMLName  xml.Name
			Settings []struct {
				XMLName xml.Name
				Value   string `xml:",chardata"`
			} `xml:",any"`
		} `xml:",any"`
	} `xml:"profiles"`
	Users struct {
		List []struct {
			XMLName  xml.Name
			Password struct {
				FromEnv string `xml:"from_env,attr"`
			} `xml:"password"`
			Profile        string   `xml:"profile"`
			Networks       []string `xml:"networks>ip"`
			Grants         []string `xml:"grants>query"`
			AllowDatabases []string `xml:"allow_databases>database"`
		} `xml:",any"`
	} `xml:"users"`
}

// user is one user of a users file, with its profile's settings.
type user struct {
	fromEnv  string
	settings map[string]string
	grants   []string
	dbs      []string
}

func readUsers(t *testing.T, path, root string) map[string]user {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f usersFile
	// encoding/xml also refuses what ClickHouse refuses, such as "--" inside a comment.
	if err := xml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if f.XMLName.Local != root {
		t.Errorf("%s: root element <%s>, want <%s>", path, f.XMLName.Local, root)
	}
	profiles := map[string]map[string]string{}
	for _, p := range f.Profiles.List {
		m := map[string]string{}
		for _, s := range p.Settings {
			m[s.XMLName.Local] = strings.TrimSpace(s.Value)
		}
		profiles[p.XMLName.Local] = m
	}
	out := map[string]user{}
	for _, u := range f.Users.List {
		name := u.XMLName.Local
		settings, ok := profiles[u.Profile]
		if !ok && u.Profile != "default" {
			t.Errorf("%s: user %s has profile %q, which the file does not declare", path, name, u.Profile)
		}
		if u.Password.FromEnv == "" {
			t.Errorf("%s: user %s: the password must come from the environment (from_env), not from the file", path, name)
		}
		if len(u.Networks) == 0 {
			t.Errorf("%s: user %s: no <networks>", path, name)
		}
		if len(u.Grants) > 0 && len(u.AllowDatabases) > 0 {
			t.Errorf("%s: user %s: current ClickHouse refuses <grants> beside <allow_databases>", path, name)
		}
		out[name] = user{fromEnv: u.Password.FromEnv, settings: settings, grants: u.Grants, dbs: u.AllowDatabases}
	}
	return out
}

var commandUsers = []string{"lambda_migrate", "lambda_speed", "lambda_batch", "lambda_serve"}

// sqlFile reads lambda-users.sql: its statements, the grants per user and the settings per
// profile.
func sqlFile(t *testing.T) (stmts []string, grants map[string][]string, profiles map[string]map[string]string, users map[string]string) {
	t.Helper()
	b, err := os.ReadFile("config/clickhouse/lambda-users.sql")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "--") {
			lines = append(lines, l)
		}
	}
	grants, profiles, users = map[string][]string{}, map[string]map[string]string{}, map[string]string{}
	grantRE := regexp.MustCompile(`^(GRANT .+) TO (\w+)$`)
	profileRE := regexp.MustCompile(`^CREATE SETTINGS PROFILE IF NOT EXISTS (\w+) SETTINGS (.+)$`)
	userRE := regexp.MustCompile(`^CREATE USER IF NOT EXISTS (\w+) IDENTIFIED WITH sha256_password BY '[^']+'(?: SETTINGS PROFILE (\w+))?$`)
	for _, st := range strings.Split(strings.Join(lines, "\n"), ";") {
		st = strings.Join(strings.Fields(st), " ")
		if st == "" {
			continue
		}
		stmts = append(stmts, st)
		switch {
		case grantRE.MatchString(st):
			m := grantRE.FindStringSubmatch(st)
			grants[m[2]] = append(grants[m[2]], m[1])
		case profileRE.MatchString(st):
			m := profileRE.FindStringSubmatch(st)
			settings := map[string]string{}
			for _, kv := range strings.Split(m[2], ",") {
				k, v, _ := strings.Cut(kv, "=")
				settings[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
			profiles[m[1]] = settings
		case userRE.MatchString(st):
			m := userRE.FindStringSubmatch(st)
			users[m[1]] = m[2]
		default:
			t.Errorf("lambda-users.sql: statement the test does not know: %s", st)
		}
	}
	return stmts, grants, profiles, users
}

// nonDefault drops settings at their default value (readonly 0).
func nonDefault(m map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		if !(k == "readonly" && v == "0") {
			out[k] = v
		}
	}
	return out
}

// TestClickHouseUsers checks the least-privilege users of deploy/config/clickhouse: one per
// command in the current-version users.d file, in the SQL file with the same grants and
// settings, and in the 18.16 file with profiles and allow_databases (cmd/lambda's
// TestLeastPrivilegeUsers runs the commands as those users on a 18.16 server). The grants name
// tables the schema creates, and every statement parses on a current ClickHouse (chDB).
func TestClickHouseUsers(t *testing.T) {
	current := readUsers(t, "config/clickhouse/users.d/lambda-users.xml", "clickhouse")
	old := readUsers(t, "config/clickhouse/clickhouse-18.16/lambda-users.xml", "yandex")
	analyst := readUsers(t, "config/clickhouse/users.d/analyst.xml", "clickhouse")
	if a, ok := analyst["analyst"]; !ok || a.settings["readonly"] != "1" {
		t.Errorf("users.d/analyst.xml: no read-only analyst user (readonly=1): %+v", a)
	}
	stmts, sqlGrants, sqlProfiles, sqlUsers := sqlFile(t)

	cfg, err := config.Parse("<demo>", config.DemoYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	objects := map[string]bool{}
	for _, o := range schema.NewGenerator(cfg).Objects(cfg) {
		objects[o.Name] = true
	}
	onRE := regexp.MustCompile(` ON (\w+)\.(\w+|\*)$`)

	for _, name := range commandUsers {
		cu, ok := current[name]
		if !ok {
			t.Errorf("users.d/lambda-users.xml: no user %s", name)
			continue
		}
		if len(cu.grants) == 0 {
			t.Errorf("users.d/lambda-users.xml: %s has no grants", name)
		}
		for _, g := range cu.grants {
			m := onRE.FindStringSubmatch(g)
			if m == nil || m[1] != cfg.ClickHouse.Database {
				t.Errorf("users.d/lambda-users.xml: %s: %q is not on database %s", name, g, cfg.ClickHouse.Database)
			} else if m[2] != "*" && !objects[m[2]] {
				t.Errorf("users.d/lambda-users.xml: %s: %q names %s, which the schema does not create", name, g, m[2])
			}
		}
		got, want := slices.Sorted(slices.Values(sqlGrants[name])), slices.Sorted(slices.Values(cu.grants))
		if !slices.Equal(got, want) {
			t.Errorf("lambda-users.sql grants %s %q, users.d/lambda-users.xml %q: keep them equal", name, got, want)
		}
		if _, ok := sqlUsers[name]; !ok {
			t.Errorf("lambda-users.sql: no CREATE USER %s", name)
		} else if p := sqlUsers[name]; fmt.Sprint(nonDefault(sqlProfiles[p])) != fmt.Sprint(nonDefault(cu.settings)) {
			t.Errorf("%s: settings %v in lambda-users.sql, %v in users.d/lambda-users.xml", name, sqlProfiles[p], cu.settings)
		}
		if cu.fromEnv != "CLICKHOUSE_"+strings.ToUpper(strings.TrimPrefix(name, "lambda_"))+"_PASSWORD" {
			t.Errorf("users.d/lambda-users.xml: %s: password from_env %q", name, cu.fromEnv)
		}

		ou, ok := old[name]
		if !ok {
			t.Errorf("clickhouse-18.16/lambda-users.xml: no user %s", name)
			continue
		}
		if len(ou.grants) > 0 || !slices.Equal(ou.dbs, []string{cfg.ClickHouse.Database}) {
			t.Errorf("clickhouse-18.16/lambda-users.xml: %s: grants %q, allow_databases %q; want no grants (18.16 has none) and only %s",
				name, ou.grants, ou.dbs, cfg.ClickHouse.Database)
		}
		if ou.fromEnv != cu.fromEnv {
			t.Errorf("%s: password from %s for 18.16, %s for current versions", name, ou.fromEnv, cu.fromEnv)
		}
	}
	// What each profile must forbid, on both versions.
	for _, c := range []struct {
		user, setting, want string
	}{
		{"lambda_serve", "readonly", "2"}, {"lambda_serve", "allow_ddl", "0"}, {"lambda_speed", "allow_ddl", "0"},
	} {
		for file, users := range map[string]map[string]user{"users.d": current, "clickhouse-18.16": old} {
			if got := users[c.user].settings[c.setting]; got != c.want {
				t.Errorf("%s/lambda-users.xml: %s: %s=%q, want %s", file, c.user, c.setting, got, c.want)
			}
		}
	}
	for _, g := range current["lambda_serve"].grants {
		if !strings.HasPrefix(g, "GRANT SELECT ON ") {
			t.Errorf("users.d/lambda-users.xml: lambda_serve must only read: %q", g)
		}
	}

	// Every statement and every XML grant parses on a current ClickHouse (users.xml grants
	// name no grantee: the server adds the user).
	all := slices.Clone(stmts)
	for _, name := range commandUsers {
		for _, g := range current[name].grants {
			all = append(all, g+" TO "+name)
		}
	}
	sort.Strings(all)
	var probes []string
	for _, st := range all {
		probes = append(probes, "SELECT formatQuery('"+strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(st)+"')")
	}
	for i, r := range chtest.ChDB(t, probes) {
		if !r.OK {
			t.Errorf("current ClickHouse (chDB) cannot parse %s: %s", all[i], r.Error)
		}
	}
}
