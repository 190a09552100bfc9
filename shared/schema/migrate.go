package schema

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/shared/config"
)

// MigrateOptions change what Migrate may do.
type MigrateOptions struct {
	// AllowDrop lets Migrate drop columns of dimensions and metrics removed from the config.
	AllowDrop bool
	// RecomputeZone lets Migrate rebuild the per-day tables of a dataset whose time_zone changed
	// (see recomputeZone); without it such a change is refused.
	RecomputeZone bool
	Logger        *slog.Logger
}

// Migrate creates every object of the configuration and upgrades existing ones additively: new
// dimensions and metrics add columns, views are recreated when their statement changed. A
// removed dimension or metric is refused unless opts.AllowDrop. It is idempotent and safe to run
// at every start. It returns the statements it ran.
//
// In cluster mode (cfg.ClickHouse.Cluster set) every statement runs ON CLUSTER, and Migrate
// creates what is missing and recreates changed views, but refuses to alter an existing table:
// ALTER … ON CLUSTER runs once per shard, which is wrong for the tables replicated on every
// node, and rebuilding the speed view cluster-wide is a job for an operator. The error names
// the table and the change; docs/operations.md says how to apply it by hand. A node that is
// down when a statement runs gets it from the distributed DDL queue when it is back (the
// statement waits for it up to the server's distributed_ddl_task_timeout, then fails).
func Migrate(ctx context.Context, conn driver.Conn, cfg *config.Config, opts MigrateOptions) ([]string, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	g := NewGenerator(cfg)
	m := &migrator{conn: conn, g: g, log: log}
	objs := g.Objects(cfg)

	// Plan every table first, so a refused change leaves everything as it was.
	rezone, err := m.zoneChanges(ctx, cfg, opts.RecomputeZone)
	if err != nil {
		return nil, err
	}
	plans := map[string]tablePlan{}
	for _, o := range objs {
		if o.Kind != Table {
			continue
		}
		p, err := m.planTable(ctx, o, opts.AllowDrop)
		if err != nil {
			return nil, err
		}
		plans[o.Name] = p
	}
	for _, ds := range rezone {
		if err := m.recomputeZone(ctx, ds); err != nil {
			return m.ran, err
		}
		for _, name := range zoneTables(ds) {
			plans[name] = tablePlan{} // dropped: created anew
		}
	}
	for _, o := range objs {
		switch o.Kind {
		case Database:
			if err := m.exec(ctx, o.Create); err != nil {
				return m.ran, err
			}
		case Table:
			if err := m.applyTable(ctx, o, plans[o.Name]); err != nil {
				return m.ran, err
			}
		case View:
			if err := m.applyView(ctx, o); err != nil {
				return m.ran, err
			}
		}
	}
	if err := m.dropStaleSetViews(ctx, cfg, objs); err != nil {
		return m.ran, err
	}
	return m.ran, nil
}

// dropStaleSetViews drops the views of grouping sets the configuration no longer has
// (<ds>_lambda_by_…, <ds>_lambda_hourly_by_… of a removed dimension or set): they would fail on
// the columns a removed dimension leaves behind, or answer from a set no longer computed.
func (m *migrator) dropStaleSetViews(ctx context.Context, cfg *config.Config, objs []Object) error {
	want := map[string]bool{}
	for _, o := range objs {
		want[o.Name] = true
	}
	var names []string
	for _, d := range cfg.Datasets {
		names = append(names, d.Name)
	}
	// Names are [a-z][a-z0-9_]* (validated): nothing to escape.
	setView := regexp.MustCompile("^(" + strings.Join(names, "|") + ")_lambda_(hourly_)?(total|by_[a-z0-9_]+)$")
	rows, err := m.conn.Query(ctx, "SELECT name FROM system.tables WHERE database = ? AND engine = 'View'", m.g.DB)
	if err != nil {
		return fmt.Errorf("cannot list the grouping set views: %w", err)
	}
	var stale []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			rows.Close()
			return fmt.Errorf("cannot list the grouping set views: %w", err)
		}
		if !want[name] && setView.MatchString(name) {
			stale = append(stale, name)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("cannot list the grouping set views: %w", err)
	}
	for _, name := range stale {
		m.log.Info("dropping the view of a grouping set the config no longer has", "view", name)
		if err := m.exec(ctx, "DROP TABLE IF EXISTS "+m.g.T(name)+m.g.OnCluster()); err != nil {
			return err
		}
	}
	return nil
}

type migrator struct {
	conn driver.Conn
	g    *Generator
	log  *slog.Logger
	ran  []string
	// rebuilt names tables recreated in this run; their views must be recreated too.
	rebuilt []string
	// created names tables created in this run (they did not exist).
	created []string
	// rezoned names datasets whose per-day tables are rebuilt in a new time zone.
	rezoned []string
}

func (m *migrator) exec(ctx context.Context, sql string) error {
	if err := m.conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("cannot run %q: %w", firstLine(sql), err)
	}
	m.ran = append(m.ran, sql)
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

type tablePlan struct {
	exists   bool
	add      []Column
	drop     []string
	rebuild  bool   // the sorting key of an aggregating table changed
	relayout string // the sorting key or granularity of a Relayout table changed: how, "" if not
}

// Columns returns the existing columns of a table in order, nil when it does not exist.
func Columns(ctx context.Context, conn driver.Conn, db, table string) ([]Column, error) {
	rows, err := conn.Query(ctx, "SELECT name, type FROM system.columns WHERE database = ? AND table = ?", db, table)
	if err != nil {
		return nil, fmt.Errorf("cannot read columns of %s.%s: %w", db, table, err)
	}
	defer rows.Close()
	var out []Column
	for rows.Next() {
		var c Column
		if err := rows.Scan(&c.Name, &c.Type); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

func (m *migrator) planTable(ctx context.Context, o Object, allowDrop bool) (tablePlan, error) {
	p, err := m.planChanges(ctx, o, allowDrop)
	if err == nil && p.exists && o.Relayout && !p.rebuild {
		p.relayout, err = m.layoutChange(ctx, o)
	}
	if err == nil && p.relayout != "" && m.g.Cluster != "" {
		// Copying a replicated table would need a new replication path on every node: the old
		// layout stays, which reads more but answers the same (the batch layer stages into
		// the layout the table has).
		m.log.Warn("table keeps its old layout in cluster mode: rebuild it by hand to make its queries cheaper (docs/operations.md, \"Changing the schema of a cluster\")",
			"table", o.Name, "change", p.relayout)
		p.relayout = ""
	}
	if err != nil || m.g.Cluster == "" || (len(p.add) == 0 && len(p.drop) == 0 && !p.rebuild) {
		return p, err
	}
	var change []string
	for _, c := range p.add {
		change = append(change, "ADD COLUMN "+Q(c.Name)+" "+c.Type)
	}
	for _, c := range p.drop {
		change = append(change, "DROP COLUMN "+Q(c))
	}
	return p, fmt.Errorf("%s needs %s, but migrate does not alter tables in cluster mode (clickhouse.cluster %q): apply it by hand (docs/operations.md, \"Changing the schema of a cluster\")",
		o.Name, strings.Join(change, ", "), m.g.Cluster)
}

func (m *migrator) planChanges(ctx context.Context, o Object, allowDrop bool) (tablePlan, error) {
	have, err := Columns(ctx, m.conn, m.g.DB, o.Name)
	if err != nil {
		return tablePlan{}, err
	}
	if len(have) == 0 {
		return tablePlan{}, nil
	}
	p := tablePlan{exists: true}
	for _, want := range o.Columns {
		i := slices.IndexFunc(have, func(c Column) bool { return c.Name == want.Name })
		switch {
		case i < 0:
			p.add = append(p.add, want)
			if o.Rebuild != "" {
				// A new key column would merge rows across it; a new state column would be
				// empty in every existing row (a sum or max of nothing reads NULL, not its
				// value): either way the table is refilled from raw.
				p.rebuild = true
			}
		case normType(have[i].Type) != normType(want.Type):
			return p, fmt.Errorf("%s.%s has type %s but the config needs %s: migrate does not change types; rename the dimension or metric",
				o.Name, want.Name, have[i].Type, want.Type)
		}
	}
	for _, c := range have {
		if slices.ContainsFunc(o.Columns, func(w Column) bool { return w.Name == c.Name }) {
			continue
		}
		if !allowDrop {
			return p, fmt.Errorf("%s has column %q that the config no longer declares (a dimension or metric was removed): rerun migrate with --allow-drop to drop it",
				o.Name, c.Name)
		}
		p.drop = append(p.drop, c.Name)
		if o.Rebuild != "" {
			p.rebuild = true
		}
	}
	return p, nil
}

// normType makes type names from system.columns comparable with generated ones: servers
// differ in spaces and in quoting of parameters.
func normType(t string) string {
	return strings.NewReplacer(" ", "", `"`, "'").Replace(t)
}

// layoutChange describes how a table's sorting key or index granularity differs from o's, ""
// when they are the same.
func (m *migrator) layoutChange(ctx context.Context, o Object) (string, error) {
	var key, engine string
	q := "SELECT sorting_key, engine_full FROM system.tables WHERE database = ? AND name = ?"
	if err := m.conn.QueryRow(ctx, q, m.g.DB, o.Name).Scan(&key, &engine); err != nil {
		return "", fmt.Errorf("cannot read the layout of %s: %w", o.Name, err)
	}
	var change []string
	if want := strings.Join(o.Key, ", "); normKey(key) != normKey(want) {
		change = append(change, fmt.Sprintf("sorting key (%s) to (%s)", key, want))
	}
	if have := Granularity(engine); o.Granularity != 0 && have != o.Granularity {
		change = append(change, fmt.Sprintf("index_granularity %d to %d", have, o.Granularity))
	}
	return strings.Join(change, ", "), nil
}

var granularityRE = regexp.MustCompile(`\bindex_granularity\s*=\s*(\d+)`)

// Granularity is the index granularity a table's engine_full (system.tables) states, 8192 (the
// server's default) when it states none.
func Granularity(engineFull string) int {
	if m := granularityRE.FindStringSubmatch(engineFull); m != nil {
		n, err := strconv.Atoi(m[1])
		if err == nil {
			return n
		}
	}
	return 8192
}

// normKey makes sorting keys comparable: servers differ in spaces and quoting.
func normKey(k string) string {
	return strings.NewReplacer(" ", "", "`", "", "(", "", ")", "").Replace(k)
}

// relayout copies a table's rows into a new table of o's layout and swaps it in. The copy is
// made beside the table (<name>_relayout) and renamed over it, so a failure before the rename
// leaves the table as it was. A table fed by a materialized view (<ds>_speed) loses the view
// for the copy, and Migrate creates it again after (views come after their tables): rows
// inserted into raw meanwhile are not in the copy (they are in raw, and a batch run of their
// day rewrites its minutes).
func (m *migrator) relayout(ctx context.Context, o Object, change string) error {
	t, tmp, old := m.g.T(o.Name), m.g.T(o.Name+"_relayout"), m.g.T(o.Name+"_relayout_old")
	m.log.Warn("copying table into its new layout", "table", o.Name, "change", change)
	if o.Rebuild != "" {
		if err := m.exec(ctx, "DROP TABLE IF EXISTS "+m.g.T(SpeedMV(o.Dataset))); err != nil {
			return err
		}
	}
	cols := make([]string, len(o.Columns))
	for i, c := range o.Columns {
		cols[i] = Q(c.Name)
	}
	list := strings.Join(cols, ", ")
	for _, sql := range []string{
		"DROP TABLE IF EXISTS " + tmp,
		"DROP TABLE IF EXISTS " + old,
		strings.Replace(o.Create, t, tmp, 1),
		fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s", tmp, list, list, t),
		fmt.Sprintf("RENAME TABLE %s TO %s, %s TO %s", t, old, tmp, t),
		"DROP TABLE " + old,
	} {
		if err := m.exec(ctx, sql); err != nil {
			return err
		}
	}
	return nil
}

func (m *migrator) applyTable(ctx context.Context, o Object, p tablePlan) error {
	t := m.g.T(o.Name)
	if p.rebuild {
		// The key of an aggregating table changed: rows would merge across the new dimension.
		// Recreate it and refill it from the master dataset; the materialized view feeding it
		// is recreated after.
		m.log.Warn("rebuilding table from raw: its dimensions changed", "table", o.Name)
		if o.Dataset != "" {
			if err := m.exec(ctx, "DROP TABLE IF EXISTS "+m.g.T(SpeedMV(o.Dataset))); err != nil {
				return err
			}
		}
		if err := m.exec(ctx, "DROP TABLE IF EXISTS "+t); err != nil {
			return err
		}
		if err := m.exec(ctx, o.Create); err != nil {
			return err
		}
		m.rebuilt = append(m.rebuilt, o.Dataset)
		return m.exec(ctx, o.Rebuild)
	}
	if !p.exists {
		m.created = append(m.created, o.Name)
		if err := m.exec(ctx, o.Create); err != nil {
			return err
		}
		if o.Rebuild != "" && slices.Contains(m.rezoned, o.Dataset) {
			return m.exec(ctx, o.Rebuild) // the speed minutes of the new zone's days
		}
		return nil
	}
	for _, c := range p.add {
		sql := fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", t, Q(c.Name), c.Type)
		if c.Default != "" {
			sql += " DEFAULT " + c.Default
		}
		if err := m.exec(ctx, sql); err != nil {
			return err
		}
	}
	if p.relayout != "" {
		// The copy has o's columns only: it leaves the dropped ones behind, those of the old
		// sorting key too.
		return m.relayout(ctx, o, p.relayout)
	}
	// Last column first: a column's DEFAULT reads only columns before it (a value beside its
	// state in <ds>_speed_hourly), and ClickHouse refuses to drop a column another depends on.
	for _, name := range slices.Backward(p.drop) {
		if slices.Contains(o.Key, name) {
			// ClickHouse cannot drop a column of the sorting key; it stays, unused.
			m.log.Warn("column removed from the config stays: it is part of the sorting key", "table", o.Name, "column", name)
			continue
		}
		if err := m.exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP COLUMN %s", t, Q(name))); err != nil {
			return err
		}
	}
	return nil
}

func (m *migrator) applyView(ctx context.Context, o Object) error {
	sum := sha256.Sum256([]byte(o.Create))
	hash := hex.EncodeToString(sum[:])
	var exists uint64
	if err := m.conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = ?", m.g.DB, o.Name).Scan(&exists); err != nil {
		return fmt.Errorf("cannot look up %s: %w", o.Name, err)
	}
	if exists > 0 && !slices.Contains(m.rebuilt, o.Dataset) {
		var have string
		q := fmt.Sprintf("SELECT argMax(statement_hash, at) FROM %s WHERE object = ?", m.g.T(SchemaObjects))
		if err := m.conn.QueryRow(ctx, q, o.Name).Scan(&have); err != nil {
			return fmt.Errorf("cannot read the recorded statement of %s: %w", o.Name, err)
		}
		if have == hash {
			return nil
		}
	}
	if err := m.exec(ctx, "DROP TABLE IF EXISTS "+m.g.T(o.Name)+m.g.OnCluster()); err != nil {
		return err
	}
	if err := m.exec(ctx, o.Create); err != nil {
		return err
	}
	if o.Fill != "" && slices.Contains(m.created, o.FillTarget) {
		// The view counts what is inserted from now on; bring its target up to date with
		// what its source held before. A row inserted in between may count twice: the
		// ledger's rules compare counts over time, and a changed count only reruns a day.
		if err := m.exec(ctx, o.Fill); err != nil {
			return err
		}
	}
	return m.conn.Exec(ctx, fmt.Sprintf("INSERT INTO %s (object, statement_hash) SELECT ?, ?", m.g.T(SchemaObjects)), o.Name, hash)
}

// Statements returns every CREATE statement of the configuration, for golden files and for
// checking them on other servers.
func Statements(cfg *config.Config) []string {
	var out []string
	g := NewGenerator(cfg)
	for _, o := range g.Objects(cfg) {
		out = append(out, o.Create)
	}
	return out
}
