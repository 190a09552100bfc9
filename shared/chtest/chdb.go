package chtest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// ChDBResult is the outcome of one statement run through chDB.
type ChDBResult struct {
	I     int    `json:"i"`
	OK    bool   `json:"ok"`
	Out   string `json:"out"`
	Error string `json:"error"`
}

// ChDB runs statements in order in one chDB session (a current ClickHouse engine embedded in
// the npm package chdb, see tools/chdb) and returns one result per statement. The runner must
// be installed (`make chdb`); a missing runner fails the test.
func ChDB(t testing.TB, stmts []string) []ChDBResult {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	runner := filepath.Join(root, "tools", "chdb", "run.js")
	if _, err := os.Stat(filepath.Join(root, "tools", "chdb", "node_modules", "chdb")); err != nil {
		t.Fatalf("chdb is not installed (run `make chdb`): %v", err)
	}
	in, err := json.Marshal(stmts)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("node", runner)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chdb runner: %v\n%s", err, stderr.String())
	}
	var res []ChDBResult
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		var r ChDBResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("chdb runner printed %q: %v", sc.Text(), err)
		}
		res = append(res, r)
	}
	if len(res) != len(stmts) {
		t.Fatalf("chdb runner answered %d of %d statements\n%s", len(res), len(stmts), stderr.String())
	}
	return res
}

// RequireChDB runs statements through chDB and fails the test for each one that fails.
func RequireChDB(t testing.TB, stmts []string) []ChDBResult {
	t.Helper()
	res := ChDB(t, stmts)
	for i, r := range res {
		if !r.OK {
			t.Errorf("chdb (current ClickHouse) refused statement %d:\n%s\nerror: %s", i, stmts[i], r.Error)
		}
	}
	return res
}
