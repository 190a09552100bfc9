package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/lambda-platform/lambda/batchlayer"
	"github.com/lambda-platform/lambda/serving"
	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

// TestClusterAnswersSameAsSingleNode (batch and serving layers together, in process) loads the same events into a single server and into the
// local cluster (2 shards x 2 replicas), seals the same days with the batch layer, and asks both
// APIs the same questions: every answer (rows, sources, exactness) must be identical, whether
// it comes from <ds>_daily, from deduplicated raw or from the speed view.
func TestClusterAnswersSameAsSingleNode(t *testing.T) {
	ccfg := chtest.ClusterConfig(t, nil)
	cconn := chtest.NewCluster(t, ccfg)
	scfg := chtest.Config(t, nil)
	sconn := chtest.New(t, scfg)
	day := time.Date(2024, 3, 5, 0, 0, 0, 0, time.UTC)
	now := day.AddDate(0, 0, 3).Add(13 * time.Hour)
	evs := clusterEvents(day, now.Add(-time.Hour))
	var servers []*serving.Server
	for _, e := range []struct {
		cfg  *config.Config
		conn driver.Conn
	}{{scfg, sconn}, {ccfg, cconn}} {
		ctx := context.Background()
		if _, err := schema.Migrate(ctx, e.conn, e.cfg, schema.MigrateOptions{}); err != nil {
			t.Fatal(err)
		}
		insertEvents(t, e.conn, e.cfg, evs)
		l, err := batchlayer.New(e.cfg, batchlayer.Options{Conn: e.conn, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.RunDays(ctx, "events", day, day.AddDate(0, 0, 1), nil); err != nil {
			t.Fatal(err)
		}
		_ = l.Close()
		srv, err := serving.New(e.cfg, serving.Options{Conn: e.conn, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, srv)
	}
	queries := []string{
		`{"dataset":"events","metrics":["events","users","revenue","value_p95"],"from":"2024-03-05","to":"2024-03-08T12:00:00Z","granularity":"day"}`,
		`{"dataset":"events","metrics":["events","users","revenue"],"dimensions":["country"],"from":"2024-03-05","to":"2024-03-08T12:00:00Z","granularity":"day"}`,
		`{"dataset":"events","metrics":["events","users","revenue","value_p95"],"dimensions":["device"],"from":"2024-03-06T18:00:00Z","to":"2024-03-07T06:00:00Z","granularity":"hour"}`,
		`{"dataset":"events","metrics":["events","users"],"filters":[{"dimension":"country","op":"eq","values":["de"]}],"from":"2024-03-05","to":"2024-03-08T12:00:00Z","granularity":"all"}`,
		`{"dataset":"events","metrics":["events","users","value_p95"],"dimensions":["event"],"from":"2024-03-05","to":"2024-03-08","granularity":"week","exact":true}`,
		`{"dataset":"events","metrics":["events","revenue"],"dimensions":["country","device"],"from":"2024-03-08T10:00:00Z","to":"2024-03-08T11:00:00Z","granularity":"minute","limit":50}`,
	}
	for _, q := range queries {
		var answers []string
		for _, srv := range servers {
			answers = append(answers, ask(t, srv, q))
		}
		if answers[0] != answers[1] {
			t.Errorf("query %s:\nsingle node: %s\ncluster:     %s", q, answers[0], answers[1])
		}
		if !strings.Contains(answers[0], `"rows":[{`) {
			t.Errorf("query %s: no rows: %s", q, answers[0])
		}
	}
}

// ask posts a query and returns its rows and the meta fields that do not depend on timing.
func ask(t *testing.T, srv *serving.Server, body string) string {
	t.Helper()
	r := httptest.NewRequest("POST", "/api/v1/query", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	srv.Handler().ServeHTTP(w, r)
	if w.Code != 200 {
		t.Fatalf("query %s: status %d: %s", body, w.Code, w.Body.String())
	}
	var resp struct {
		Rows json.RawMessage `json:"rows"`
		Meta struct {
			BatchWatermark any             `json:"batch_watermark"`
			Complete       bool            `json:"complete"`
			Sources        json.RawMessage `json:"sources"`
		} `json:"meta"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(resp)
	return string(out)
}

type clusterEvent struct {
	id, ev, country, device, user string
	value                         *float64
	t, ing                        time.Time
	off                           int64
}

// clusterEvents makes ~30 events an hour with 5% duplicates (a later copy that differs, so that
// keeping the wrong one shows) and quarter values, whose sums are exact in any order.
func clusterEvents(from, to time.Time) []clusterEvent {
	rng := rand.New(rand.NewPCG(11, 12))
	var out []clusterEvent
	var off int64
	for h := from; h.Before(to); h = h.Add(time.Hour) {
		for range 30 {
			off++
			e := clusterEvent{id: fmt.Sprintf("e%d", off), ev: []string{"view", "click", "buy"}[rng.IntN(3)],
				country: []string{"de", "fr", "us"}[rng.IntN(3)], device: []string{"ios", "web"}[rng.IntN(2)],
				user: fmt.Sprintf("u%d", rng.IntN(50)), t: h.Add(time.Duration(rng.IntN(3600)) * time.Second), off: off}
			if rng.IntN(10) != 0 {
				v := float64(rng.IntN(4000)) / 4
				e.value = &v
			}
			e.ing = e.t.Add(time.Second)
			out = append(out, e)
			if rng.IntN(20) == 0 {
				dup := e
				dup.country, dup.ing = "zz", e.ing.Add(time.Minute)
				off++
				dup.off = off
				out = append(out, dup)
			}
		}
	}
	return out
}

func insertEvents(t *testing.T, conn driver.Conn, cfg *config.Config, evs []clusterEvent) {
	t.Helper()
	g := schema.NewGenerator(cfg)
	byDay := map[time.Time][]clusterEvent{}
	for _, e := range evs {
		d := e.t.Truncate(24 * time.Hour)
		byDay[d] = append(byDay[d], e)
	}
	for _, es := range byDay {
		b, err := conn.PrepareBatch(context.Background(), fmt.Sprintf("INSERT INTO %s (id, time, event, country, device, user_id, value, _topic, _partition, _offset, _late, _ingested_at)", g.T(schema.Raw("events"))))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if err := b.Append(e.id, e.t, e.ev, e.country, e.device, e.user, e.value, "events", int32(0), e.off, uint8(0), e.ing); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
}
