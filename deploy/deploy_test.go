// Package deploy_test checks the deployment artifacts without a Docker engine or a Kubernetes
// cluster: every YAML file parses, the Kubernetes manifests have what a rollout needs
// (resources, probes, one batch scheduler, several serve replicas, a ClickHouse user per
// command), the lambda configs load, the Grafana dashboards query objects the schema generator
// creates and their SQL runs on a current ClickHouse (chDB), the least-privilege ClickHouse
// users agree across their three forms, the compose file runs the demo by default with topics
// from the config and pinned images and plugin, and docker-compose accepts it (Debian's, which
// deploy/local/test-deps.sh installs).
package deploy_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/lambda-platform/lambda/shared/chtest"
	"github.com/lambda-platform/lambda/shared/config"
	"github.com/lambda-platform/lambda/shared/schema"
)

// Tests run in deploy/; the repository root is its parent.
const root = ".."

// yamlDocs decodes every document of a YAML file into generic values.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var docs []map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for i := 0; ; i++ {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, i, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	return docs
}

// decodeAs re-decodes a generic document into a typed value.
func decodeAs(t *testing.T, what string, v any, out any) {
	t.Helper()
	b, err := yaml.Marshal(v)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if err := yaml.Unmarshal(b, out); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func yamlFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestYAMLParses(t *testing.T) {
	files := yamlFiles(t, ".")
	if len(files) < 10 {
		t.Fatalf("found only %d YAML files under deploy/: %v", len(files), files)
	}
	for _, f := range files {
		if docs := yamlDocs(t, f); len(docs) == 0 {
			t.Errorf("%s: no YAML document", f)
		}
	}
}

func TestLambdaConfigsLoad(t *testing.T) {
	files, err := filepath.Glob("config/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no lambda config under deploy/config: %v", err)
	}
	for _, f := range files {
		cfg, err := config.Load(f)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		// The containers' listeners must be reachable from outside the container.
		for name, addr := range map[string]string{"serving.listen": cfg.Serving.Listen,
			"speed.metrics_listen": cfg.Speed.MetricsListen, "batch.metrics_listen": cfg.Batch.MetricsListen} {
			if strings.HasPrefix(addr, "127.") || strings.HasPrefix(addr, "localhost") {
				t.Errorf("%s: %s is %q: unreachable from outside the container", f, name, addr)
			}
		}
	}
}

// k8s types: only the fields the checks read.
type k8sMeta struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type container struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Resources struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	ReadinessProbe *probe `yaml:"readinessProbe"`
	LivenessProbe  *probe `yaml:"livenessProbe"`
	Env            []struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	} `yaml:"env"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `yaml:"name"`
		} `yaml:"configMapRef"`
	} `yaml:"envFrom"`
}

type podTemplate struct {
	Metadata struct {
		Labels map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
	Spec struct {
		Containers []container `yaml:"containers"`
		Volumes    []struct {
			Name      string `yaml:"name"`
			ConfigMap *struct {
				Name string `yaml:"name"`
			} `yaml:"configMap"`
		} `yaml:"volumes"`
	} `yaml:"spec"`
}

type workload struct {
	Spec struct {
		Replicas *int `yaml:"replicas"`
		Strategy struct {
			Type string `yaml:"type"`
		} `yaml:"strategy"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template podTemplate `yaml:"template"`
	} `yaml:"spec"`
}

type kustomization struct {
	Kind       string   `yaml:"kind"`
	Resources  []string `yaml:"resources"`
	Components []string `yaml:"components"`
	Patches    []struct {
		Path string `yaml:"path"`
	} `yaml:"patches"`
}

// subcommands the images may run.
var subcommands = []string{"migrate", "speed", "batch", "serve"}

func TestKubernetesManifests(t *testing.T) {
	type doc struct {
		file string
		meta k8sMeta
		raw  map[string]any
	}
	var docs []doc
	for _, f := range yamlFiles(t, "k8s") {
		if filepath.Base(f) == "kustomization.yaml" {
			checkKustomization(t, f)
			continue
		}
		for i, d := range yamlDocs(t, f) {
			var m k8sMeta
			decodeAs(t, f, d, &m)
			where := fmt.Sprintf("%s: document %d", f, i)
			if m.APIVersion == "" || m.Kind == "" || m.Metadata.Name == "" {
				t.Errorf("%s: apiVersion, kind and metadata.name are required, got %q %q %q", where, m.APIVersion, m.Kind, m.Metadata.Name)
			}
			if m.Kind != "Namespace" && m.Metadata.Namespace != "lambda" {
				t.Errorf("%s: %s/%s: namespace %q, want lambda", where, m.Kind, m.Metadata.Name, m.Metadata.Namespace)
			}
			if filepath.Dir(f) == "k8s" {
				docs = append(docs, doc{f, m, d})
			}
		}
	}
	byKind := map[string]map[string]map[string]any{}
	for _, d := range docs {
		if byKind[d.meta.Kind] == nil {
			byKind[d.meta.Kind] = map[string]map[string]any{}
		}
		if _, dup := byKind[d.meta.Kind][d.meta.Metadata.Name]; dup {
			t.Errorf("%s: %s/%s declared twice", d.file, d.meta.Kind, d.meta.Metadata.Name)
		}
		byKind[d.meta.Kind][d.meta.Metadata.Name] = d.raw
	}

	// Config: the ConfigMap carries the same lambda.yaml as deploy/config.
	cm, ok := byKind["ConfigMap"]["lambda-config"]
	if !ok {
		t.Fatal("no ConfigMap lambda-config")
	}
	var cmData struct {
		Data map[string]string `yaml:"data"`
	}
	decodeAs(t, "ConfigMap lambda-config", cm, &cmData)
	inMap, err := config.Parse("ConfigMap lambda-config lambda.yaml", []byte(cmData.Data["lambda.yaml"]), nil)
	if err != nil {
		t.Fatalf("%v", err)
	}
	onDisk, err := os.ReadFile("config/lambda.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want, err := config.Parse("config/lambda.yaml", onDisk, nil)
	if err != nil {
		t.Fatal(err)
	}
	if inMap.Version != want.Version {
		t.Errorf("ConfigMap lambda-config lambda.yaml differs from deploy/config/lambda.yaml: copy it over")
	}
	var envData struct {
		Data map[string]string `yaml:"data"`
	}
	decodeAs(t, "ConfigMap lambda-env", byKind["ConfigMap"]["lambda-env"], &envData)
	for _, k := range []string{"LAMBDA_CLICKHOUSE_ADDR", "LAMBDA_KAFKA_BROKERS"} {
		if envData.Data[k] == "" {
			t.Errorf("ConfigMap lambda-env: %s is missing", k)
		}
	}
	var secret struct {
		StringData map[string]string `yaml:"stringData"`
	}
	decodeAs(t, "Secret lambda-secrets", byKind["Secret"]["lambda-secrets"], &secret)

	// Workloads: resources, probes on declared ports, config mounted, secrets that exist.
	templates := map[string]podTemplate{}
	deployments := map[string]workload{}
	for kind, objs := range byKind {
		if kind != "Deployment" && kind != "Job" {
			continue
		}
		for name, raw := range objs {
			var w workload
			decodeAs(t, kind+" "+name, raw, &w)
			templates[kind+"/"+name] = w.Spec.Template
			if kind == "Deployment" {
				deployments[name] = w
				if !mapContains(w.Spec.Template.Metadata.Labels, w.Spec.Selector.MatchLabels) || len(w.Spec.Selector.MatchLabels) == 0 {
					t.Errorf("Deployment %s: selector %v does not match the pod labels %v", name, w.Spec.Selector.MatchLabels, w.Spec.Template.Metadata.Labels)
				}
			}
		}
	}
	for id, tpl := range templates {
		if len(tpl.Spec.Containers) == 0 {
			t.Errorf("%s: no containers", id)
		}
		for _, c := range tpl.Spec.Containers {
			where := id + " container " + c.Name
			if c.Resources.Requests["memory"] == "" || c.Resources.Requests["cpu"] == "" || c.Resources.Limits["memory"] == "" {
				t.Errorf("%s: needs resources.requests.cpu, requests.memory and limits.memory, got %+v", where, c.Resources)
			}
			if len(c.Args) < 3 || !slices.Contains(subcommands, c.Args[0]) || c.Args[1] != "--config" {
				t.Errorf("%s: args %q: want <%s> --config FILE", where, c.Args, strings.Join(subcommands, "|"))
			} else if !strings.HasPrefix(c.Args[2], "/etc/lambda/") {
				t.Errorf("%s: config %s is not in the mounted ConfigMap /etc/lambda", where, c.Args[2])
			}
			for _, e := range c.Env {
				if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
					if _, ok := secret.StringData[e.ValueFrom.SecretKeyRef.Key]; !ok || e.ValueFrom.SecretKeyRef.Name != "lambda-secrets" {
						t.Errorf("%s: env %s refers to secret %s key %s, which is not declared", where, e.Name, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
					}
				}
			}
			for _, e := range c.EnvFrom {
				if e.ConfigMapRef != nil && byKind["ConfigMap"][e.ConfigMapRef.Name] == nil {
					t.Errorf("%s: envFrom ConfigMap %s is not declared", where, e.ConfigMapRef.Name)
				}
			}
			// Each command connects as its own least-privilege ClickHouse user; only migrate
			// changes the schema.
			if len(c.Args) > 0 {
				user := ""
				for _, e := range c.Env {
					if e.Name == "LAMBDA_CLICKHOUSE_USERNAME" {
						user = e.Value
					}
				}
				if want := "lambda_" + c.Args[0]; user != want {
					t.Errorf("%s: LAMBDA_CLICKHOUSE_USERNAME %q, want %s (deploy/config/clickhouse/lambda-users.sql)", where, user, want)
				}
				if (c.Args[0] == "speed" || c.Args[0] == "batch") && !slices.Contains(c.Args, "--migrate=false") {
					t.Errorf("%s: args %q without --migrate=false: its user may not change the schema", where, c.Args)
				}
			}
			if !strings.HasPrefix(id, "Deployment/") {
				continue
			}
			for pname, p := range map[string]*probe{"readinessProbe": c.ReadinessProbe, "livenessProbe": c.LivenessProbe} {
				if p == nil || p.HTTPGet == nil {
					t.Errorf("%s: needs an httpGet %s", where, pname)
					continue
				}
				if !hasPort(c, p.HTTPGet.Port) {
					t.Errorf("%s: %s port %v is not a container port", where, pname, p.HTTPGet.Port)
				}
			}
		}
		mounted := false
		for _, v := range tpl.Spec.Volumes {
			if v.ConfigMap != nil && v.ConfigMap.Name == "lambda-config" {
				mounted = true
			}
		}
		if !mounted {
			t.Errorf("%s: the lambda-config ConfigMap is not mounted", id)
		}
	}

	replicas := func(name string) int {
		w, ok := deployments[name]
		if !ok {
			t.Fatalf("no Deployment %s", name)
		}
		if w.Spec.Replicas == nil {
			return 1
		}
		return *w.Spec.Replicas
	}
	for _, c := range templates["Deployment/lambda-serve"].Spec.Containers {
		// serve does not migrate: it is ready once ClickHouse and the schema are there.
		if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
			t.Errorf("Deployment lambda-serve container %s: the readiness probe must be /readyz", c.Name)
		}
	}
	if n := replicas("lambda-serve"); n < 2 {
		t.Errorf("Deployment lambda-serve: %d replicas, want more than one (it is stateless)", n)
	}
	if n := replicas("lambda-batch"); n != 1 {
		t.Errorf("Deployment lambda-batch: %d replicas, want exactly one scheduler", n)
	}
	if s := deployments["lambda-batch"].Spec.Strategy.Type; s != "Recreate" {
		t.Errorf("Deployment lambda-batch: strategy %q, want Recreate (a rollout must not run two schedulers)", s)
	}
	if n, p := replicas("lambda-speed"), partitions(t); n > p {
		t.Errorf("Deployment lambda-speed: %d replicas for a topic of %d partitions: the extra consumers would idle", n, p)
	}
	if tpl, ok := templates["Job/lambda-migrate"]; !ok || len(tpl.Spec.Containers) == 0 || tpl.Spec.Containers[0].Args[0] != "migrate" {
		t.Errorf("no Job lambda-migrate running `lambda migrate`")
	}
	serveLabels := deployments["lambda-serve"].Spec.Template.Metadata.Labels
	var svc struct {
		Spec struct {
			Selector map[string]string `yaml:"selector"`
		} `yaml:"spec"`
	}
	decodeAs(t, "Service lambda-serve", byKind["Service"]["lambda-serve"], &svc)
	if len(svc.Spec.Selector) == 0 || !mapContains(serveLabels, svc.Spec.Selector) {
		t.Errorf("Service lambda-serve: selector %v does not select the serve pods %v", svc.Spec.Selector, serveLabels)
	}
	var pdb workload
	decodeAs(t, "PodDisruptionBudget lambda-serve", byKind["PodDisruptionBudget"]["lambda-serve"], &pdb)
	if len(pdb.Spec.Selector.MatchLabels) == 0 || !mapContains(serveLabels, pdb.Spec.Selector.MatchLabels) {
		t.Errorf("PodDisruptionBudget lambda-serve: selector %v does not select the serve pods %v", pdb.Spec.Selector.MatchLabels, serveLabels)
	}
}

// checkKustomization checks that what a kustomization refers to exists and that the base
// lists every manifest beside it.
func checkKustomization(t *testing.T, path string) {
	t.Helper()
	dir := filepath.Dir(path)
	var k kustomization
	docs := yamlDocs(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s: want one document", path)
	}
	decodeAs(t, path, docs[0], &k)
	if k.Kind != "Kustomization" && k.Kind != "Component" {
		t.Errorf("%s: kind %q", path, k.Kind)
	}
	refs := append(append([]string{}, k.Resources...), k.Components...)
	for _, p := range k.Patches {
		refs = append(refs, p.Path)
	}
	for _, r := range refs {
		if _, err := os.Stat(filepath.Join(dir, r)); err != nil {
			t.Errorf("%s: refers to %s: %v", path, r, err)
		}
	}
	if dir != "k8s" {
		return
	}
	siblings, _ := filepath.Glob(filepath.Join(dir, "*.yaml"))
	for _, s := range siblings {
		if b := filepath.Base(s); b != "kustomization.yaml" && !slices.Contains(k.Resources, b) {
			t.Errorf("%s: does not list %s", path, b)
		}
	}
}

func mapContains(m, sub map[string]string) bool {
	for k, v := range sub {
		if m[k] != v {
			return false
		}
	}
	return true
}

func hasPort(c container, port any) bool {
	for _, p := range c.Ports {
		switch v := port.(type) {
		case string:
			if v == p.Name {
				return true
			}
		case int:
			if v == p.ContainerPort {
				return true
			}
		}
	}
	return false
}

// dotEnv returns the variables of deploy/.env, which docker-compose reads.
func dotEnv(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(".env")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(strings.TrimSpace(line), "#") {
			env[strings.TrimSpace(k)] = v
		}
	}
	return env
}

// partitions is the topics' partition count docker-compose creates (deploy/.env).
func partitions(t *testing.T) int {
	t.Helper()
	n, err := strconv.Atoi(dotEnv(t)["TOPIC_PARTITIONS"])
	if err != nil {
		t.Fatalf(".env: TOPIC_PARTITIONS: %v", err)
	}
	return n
}

type composeService struct {
	Image       string         `yaml:"image"`
	Command     []string       `yaml:"command"`
	Entrypoint  []string       `yaml:"entrypoint"`
	Environment map[string]any `yaml:"environment"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	Volumes  []string `yaml:"volumes"`
	Profiles []string `yaml:"profiles"`
	Deploy   *struct {
		Replicas *int `yaml:"replicas"`
	} `yaml:"deploy"`
	Restart string `yaml:"restart"`
}

func TestComposeFile(t *testing.T) {
	docs := yamlDocs(t, "docker-compose.yml")
	var c struct {
		Services map[string]composeService `yaml:"services"`
	}
	decodeAs(t, "docker-compose.yml", docs[0], &c)
	s := c.Services
	for _, name := range []string{"kafka", "kafka-init", "clickhouse", "migrate", "speed", "batch", "serve", "grafana"} {
		if _, ok := s[name]; !ok {
			t.Errorf("docker-compose.yml: no service %s", name)
		}
	}
	for name, svc := range s {
		oneShot := svc.Restart == "no"
		if !oneShot && svc.Healthcheck == nil {
			t.Errorf("service %s: no healthcheck", name)
		}
		for dep, d := range svc.DependsOn {
			want := "service_healthy"
			if s[dep].Restart == "no" {
				want = "service_completed_successfully"
			}
			if d.Condition != want {
				t.Errorf("service %s: depends on %s with condition %q, want %s", name, dep, d.Condition, want)
			}
		}
	}
	for _, name := range []string{"speed", "batch", "serve"} {
		svc := s[name]
		if len(svc.Command) == 0 || svc.Command[0] != name {
			t.Errorf("service %s: command %q, want lambda %s", name, svc.Command, name)
		}
		if _, ok := svc.DependsOn["migrate"]; !ok {
			t.Errorf("service %s: does not wait for migrate", name)
		}
		for _, k := range []string{"LAMBDA_CLICKHOUSE_ADDR", "LAMBDA_KAFKA_BROKERS"} {
			if svc.Environment[k] == nil {
				t.Errorf("service %s: %s is not set", name, k)
			}
		}
	}
	if b := s["batch"]; b.Deploy != nil && b.Deploy.Replicas != nil && *b.Deploy.Replicas != 1 {
		t.Errorf("service batch: %d replicas, want exactly one scheduler", *b.Deploy.Replicas)
	}
	if s["serve"].Environment["LAMBDA_API_KEYS"] == nil {
		t.Errorf("service serve: LAMBDA_API_KEYS is not set (serve on 0.0.0.0 requires keys)")
	}
	if v := fmt.Sprint(s["kafka"].Environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]); v != "false" {
		t.Errorf("service kafka: KAFKA_AUTO_CREATE_TOPICS_ENABLE=%s, want false", v)
	}
	if v := fmt.Sprint(s["grafana"].Environment["GF_INSTALL_PLUGINS"]); !regexp.MustCompile(`^grafana-clickhouse-datasource \d+\.\d+\.\d+$`).MatchString(v) {
		t.Errorf("service grafana: GF_INSTALL_PLUGINS=%q: want grafana-clickhouse-datasource with a pinned version (\"grafana-clickhouse-datasource 4.10.2\")", v)
	}
	for name, svc := range s {
		if svc.Image == "" || (!strings.HasPrefix(svc.Image, "lambda-platform/") && (!strings.Contains(svc.Image, ":") || strings.HasSuffix(svc.Image, ":latest"))) {
			t.Errorf("service %s: image %q is not pinned to a version", name, svc.Image)
		}
	}

	// Each lambda command as its own ClickHouse user (config/clickhouse/users.d/lambda-users.xml);
	// only migrate may change the schema, so speed and batch do not migrate at start.
	for _, name := range []string{"migrate", "speed", "batch", "serve"} {
		svc := s[name]
		if u := fmt.Sprint(svc.Environment["LAMBDA_CLICKHOUSE_USERNAME"]); u != "lambda_"+name {
			t.Errorf("service %s: LAMBDA_CLICKHOUSE_USERNAME %q, want lambda_%s", name, u, name)
		}
		want := "${CLICKHOUSE_" + strings.ToUpper(name) + "_PASSWORD"
		if p := fmt.Sprint(svc.Environment["LAMBDA_CLICKHOUSE_PASSWORD"]); !strings.HasPrefix(p, want) {
			t.Errorf("service %s: LAMBDA_CLICKHOUSE_PASSWORD %q, want %s…}", name, p, want)
		}
		if env := fmt.Sprint(s["clickhouse"].Environment[strings.TrimPrefix(want, "${")]); !strings.HasPrefix(env, want) {
			t.Errorf("service clickhouse: %s is not set (the user's password, read by lambda-users.xml)", strings.TrimPrefix(want, "${"))
		}
		if migrates := !slices.Contains(svc.Command, "--migrate=false"); (name == "speed" || name == "batch") && migrates {
			t.Errorf("service %s: command %q migrates at start, which its user may not", name, svc.Command)
		}
	}
	if !slices.Contains(s["clickhouse"].Volumes, "./config/clickhouse/users.d/lambda-users.xml:/etc/clickhouse-server/users.d/lambda-users.xml:ro") {
		t.Errorf("service clickhouse: config/clickhouse/users.d/lambda-users.xml is not mounted in users.d")
	}

	// Topics come from the lambda config (lambda topics), not from the compose file.
	if c := s["kafka-init"].Command; len(c) == 0 || c[0] != "topics" {
		t.Errorf("service kafka-init: command %q, want lambda topics (the config's topics)", c)
	}
	for name, svc := range s {
		for _, a := range append(append([]string{}, svc.Command...), svc.Entrypoint...) {
			if a == "--topic" || strings.Contains(a, "kafka-topics") {
				t.Errorf("service %s: names a topic itself (%q): topics come from the lambda config", name, a)
			}
		}
	}

	// The demo is on by default: the generator (profile demo) and a short batch schedule.
	env := dotEnv(t)
	if !slices.Contains(s["gen"].Profiles, "demo") || !slices.Contains(strings.Split(env["COMPOSE_PROFILES"], ","), "demo") {
		t.Errorf("the demo profile is not on by default: gen profiles %v, .env COMPOSE_PROFILES=%q", s["gen"].Profiles, env["COMPOSE_PROFILES"])
	}
	if !slices.Contains(s["gen"].Command, "--history-once") {
		t.Errorf("service gen: command %q without --history-once: a second up would add the history again", s["gen"].Command)
	}
	if env["BATCH_SCHEDULE"] == "" || !strings.Contains(fmt.Sprint(s["batch"].Environment["LAMBDA_BATCH_SCHEDULE"]), "${BATCH_SCHEDULE") {
		t.Errorf("service batch: the demo's short schedule (.env BATCH_SCHEDULE=%q) does not reach LAMBDA_BATCH_SCHEDULE (%v)", env["BATCH_SCHEDULE"], s["batch"].Environment["LAMBDA_BATCH_SCHEDULE"])
	}
	// Grafana reads dashboards from where the provider looks.
	var prov struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	decodeAs(t, "dashboards provider", yamlDocs(t, "grafana/provisioning/dashboards/lambda.yaml")[0], &prov)
	for _, p := range prov.Providers {
		if !slices.Contains(s["grafana"].Volumes, "../dashboards/grafana:"+p.Options.Path+":ro") {
			t.Errorf("service grafana: dashboards/grafana is not mounted at the provider path %s", p.Options.Path)
		}
	}

	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Skip("docker-compose is not installed; `apt-get install docker-compose` to validate the file with it")
	}
	cmd := exec.Command(bin, "-f", "deploy/docker-compose.yml", "config")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, stderr.String())
	}
	// What docker-compose resolved, deploy/.env included.
	var resolved struct {
		Services map[string]struct {
			Environment map[string]any `yaml:"environment"`
			Command     []string       `yaml:"command"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(out, &resolved); err != nil {
		t.Fatalf("docker-compose config output: %v", err)
	}
	if v := fmt.Sprint(resolved.Services["batch"].Environment["LAMBDA_BATCH_SCHEDULE"]); v != env["BATCH_SCHEDULE"] {
		t.Errorf("docker-compose config: batch LAMBDA_BATCH_SCHEDULE=%q, want %q from .env", v, env["BATCH_SCHEDULE"])
	}
	if c := resolved.Services["kafka-init"].Command; !slices.Contains(c, env["TOPIC_PARTITIONS"]) {
		t.Errorf("docker-compose config: kafka-init command %q does not carry TOPIC_PARTITIONS=%s", c, env["TOPIC_PARTITIONS"])
	}
}

// Grafana dashboard JSON: only what the checks read.
type grafanaPanel struct {
	Title      string `json:"title"`
	Type       string `json:"type"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		RefID      string `json:"refId"`
		RawSQL     string `json:"rawSql"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"`
}

type grafanaDashboard struct {
	UID        string         `json:"uid"`
	Title      string         `json:"title"`
	Panels     []grafanaPanel `json:"panels"`
	Templating struct {
		List []grafanaVar `json:"list"`
	} `json:"templating"`
}

// grafanaVar is a template variable; Query is the SQL of a query variable (the plugin takes a
// string or an object with rawSql).
type grafanaVar struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	Query      json.RawMessage `json:"query"`
	Definition string          `json:"definition"`
	Refresh    int             `json:"refresh"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
	Current    struct {
		Value any `json:"value"`
	} `json:"current"`
}

func (v grafanaVar) sql() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var o struct {
		RawSQL string `json:"rawSql"`
	}
	_ = json.Unmarshal(v.Query, &o)
	return o.RawSQL
}

// grafanaVars are the template variables every Grafana dashboard has, with the values the
// checks expand them to (a demo dataset, metric, dimension and two of its values). "Range" is
// the dashboard's time range, which the macros take.
var grafanaVars = map[string][]string{
	"dataset":   {"events"},
	"metric":    {"events"},
	"dimension": {"country"},
	"value":     {"de", "fr"},
}

var (
	conditionalAllRE = regexp.MustCompile(`\$__conditionalAll\((.*), \$\{?([A-Za-z_][A-Za-z0-9_]*)\}?\)`)
	varRefRE         = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)
)

// expandVars substitutes the template variables as Grafana does for the chosen values:
// ${v:singlequote} quotes each value, ${v} and $v join them with commas, and
// $__conditionalAll(cond, $v) is cond (a value is chosen, not All).
func expandVars(sql string) string {
	sql = conditionalAllRE.ReplaceAllString(sql, "$1")
	return varRefRE.ReplaceAllStringFunc(sql, func(m string) string {
		sm := varRefRE.FindStringSubmatch(m)
		name, format := sm[1]+sm[3], sm[2]
		vals, ok := grafanaVars[name]
		if !ok {
			return m // a macro, or unknown: left for the checks
		}
		if format == "singlequote" {
			q := make([]string, len(vals))
			for i, v := range vals {
				q[i] = "'" + strings.ReplaceAll(v, "'", "\\'") + "'"
			}
			return strings.Join(q, ",")
		}
		return strings.Join(vals, ",")
	})
}

// macros are the grafana-clickhouse-datasource macros the dashboards may use, with what
// they expand to for the chDB check (the plugin's expansions, fixed times).
var macros = []struct {
	re   *regexp.Regexp
	repl string
}{
	{regexp.MustCompile(`\$__timeFilter\(([^)]+)\)`), `$1 >= toDateTime(1700000000) AND $1 <= toDateTime(1900000000)`},
	{regexp.MustCompile(`\$__dateFilter\(([^)]+)\)`), `$1 >= toDate('2023-11-14') AND $1 <= toDate('2030-03-17')`},
	{regexp.MustCompile(`\$__timeInterval\(([^)]+)\)`), `toStartOfInterval(toDateTime($1), INTERVAL 60 second)`},
}

func expandMacros(sql string) string {
	sql = expandVars(sql)
	for _, m := range macros {
		sql = m.re.ReplaceAllString(sql, m.repl)
	}
	return sql
}

// dashboardQueries returns every panel query of dashboards/grafana, checking the panels.
func dashboardQueries(t *testing.T) (queries []string, names []string) {
	t.Helper()
	cfg, err := config.Parse("<demo>", config.DemoYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	db := cfg.ClickHouse.Database
	objects := map[string]bool{}
	createRE := regexp.MustCompile("CREATE (?:TABLE IF NOT EXISTS|VIEW|MATERIALIZED VIEW) `" + db + "`\\.`([a-z0-9_]+)`")
	for _, s := range schema.Statements(cfg) {
		if m := createRE.FindStringSubmatch(s); m != nil {
			objects[m[1]] = true
		}
	}
	if len(objects) < 8 {
		t.Fatalf("found only %d objects in the schema statements: %v", len(objects), objects)
	}
	lambdaViews := map[string]bool{}
	for _, d := range cfg.Datasets {
		lambdaViews[schema.Lambda(d.Name)] = true
		lambdaViews[schema.LambdaHourly(d.Name)] = true
	}

	var ds struct {
		Datasources []struct {
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
		} `yaml:"datasources"`
	}
	decodeAs(t, "datasource", yamlDocs(t, "grafana/provisioning/datasources/clickhouse.yaml")[0], &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "grafana-clickhouse-datasource" {
		t.Fatalf("want one grafana-clickhouse-datasource datasource, got %+v", ds.Datasources)
	}
	uid := ds.Datasources[0].UID

	refRE := regexp.MustCompile("\\b`?" + db + "`?\\.`?([A-Za-z0-9_]+)`?")
	varRE := regexp.MustCompile(`\$\{?[A-Za-z_][A-Za-z0-9_]*`)
	hardRE := regexp.MustCompile("dataset\\s*=\\s*'|" + db + "\\.`?[a-z0-9_]+_(raw|speed|daily|hourly|drift|rejects|lambda)")
	groupingRE := regexp.MustCompile(`\bgrouping\s*(=|IN\b)`)
	files, _ := filepath.Glob(filepath.Join(root, "dashboards", "grafana", "*.json"))
	if len(files) == 0 {
		t.Fatal("no dashboards under dashboards/grafana")
	}
	uids := map[string]string{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var d grafanaDashboard
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if d.UID == "" || d.Title == "" {
			t.Errorf("%s: uid and title are required", f)
		}
		if other, dup := uids[d.UID]; dup {
			t.Errorf("%s: uid %q is also used by %s", f, d.UID, other)
		}
		uids[d.UID] = f
		// The template variables: a dataset, its metrics, its dimensions and their values,
		// each a query of the provisioned datasource that names only objects the schema
		// creates and runs on a current ClickHouse.
		vars := map[string]grafanaVar{}
		for _, v := range d.Templating.List {
			vars[v.Name] = v
		}
		for name := range grafanaVars {
			v, ok := vars[name]
			where := fmt.Sprintf("%s: variable %s", filepath.Base(f), name)
			switch {
			case !ok:
				t.Errorf("%s: missing (every dashboard has the variables dataset, metric, dimension and value)", where)
				continue
			case v.Type != "query" || v.Datasource == nil || v.Datasource.UID != uid:
				t.Errorf("%s: want a query of the provisioned datasource %q, got type %q", where, uid, v.Type)
			case strings.TrimSpace(v.sql()) == "" || v.sql() != v.Definition:
				t.Errorf("%s: query %q and definition %q must be the same SQL", where, v.sql(), v.Definition)
			}
			if name == "value" && (!v.Multi || !v.IncludeAll || v.Refresh != 2) {
				t.Errorf("%s: want multi-value with All, refreshed on time range change (refresh 2)", where)
			}
			if name != "value" && fmt.Sprint(v.Current.Value) != grafanaVars[name][0] {
				t.Errorf("%s: default %v, want %s (the demo)", where, v.Current.Value, grafanaVars[name][0])
			}
			sql := expandMacros(v.sql())
			for _, r := range refRE.FindAllStringSubmatch(sql, -1) {
				if !objects[r[1]] {
					t.Errorf("%s: %s.%s is not an object the schema creates", where, db, r[1])
				}
			}
			if x := varRE.FindString(sql); x != "" {
				t.Errorf("%s: %s is neither a known macro nor a variable", where, x)
			}
			queries = append(queries, sql)
			names = append(names, where)
		}
		var walk func(ps []grafanaPanel)
		n := 0
		walk = func(ps []grafanaPanel) {
			for _, p := range ps {
				if p.Type == "row" {
					walk(p.Panels)
					continue
				}
				n++
				where := fmt.Sprintf("%s: panel %q", filepath.Base(f), p.Title)
				if p.Datasource == nil || p.Datasource.UID != uid {
					t.Errorf("%s: datasource is not the provisioned %q", where, uid)
				}
				if len(p.Targets) == 0 {
					t.Errorf("%s: no targets", where)
				}
				for _, tg := range p.Targets {
					if tg.Datasource == nil || tg.Datasource.UID != uid {
						t.Errorf("%s target %s: datasource is not the provisioned %q", where, tg.RefID, uid)
					}
					if strings.TrimSpace(tg.RawSQL) == "" {
						t.Errorf("%s target %s: no rawSql", where, tg.RefID)
						continue
					}
					if hardRE.MatchString(tg.RawSQL) {
						t.Errorf("%s target %s: hard-codes a dataset (%s); use ${dataset}", where, tg.RefID, hardRE.FindString(tg.RawSQL))
					}
					refs := refRE.FindAllStringSubmatch(expandVars(tg.RawSQL), -1)
					if len(refs) == 0 {
						t.Errorf("%s target %s: queries no %s.<object>: %s", where, tg.RefID, db, tg.RawSQL)
					}
					for _, r := range refs {
						if !objects[r[1]] {
							t.Errorf("%s target %s: %s.%s is not an object the schema creates", where, tg.RefID, db, r[1])
						}
						if lambdaViews[r[1]] && !groupingRE.MatchString(tg.RawSQL) {
							t.Errorf("%s target %s: reads %s without filtering on grouping (it holds every grouping set)", where, tg.RefID, r[1])
						}
					}
					sql := expandMacros(tg.RawSQL)
					if v := varRE.FindString(sql); v != "" {
						t.Errorf("%s target %s: %s is neither a known macro nor defined", where, tg.RefID, v)
					}
					queries = append(queries, sql)
					names = append(names, where)
				}
			}
		}
		walk(d.Panels)
		if n == 0 {
			t.Errorf("%s: no panels", f)
		}
	}
	return queries, names
}

func TestGrafanaDashboards(t *testing.T) {
	dashboardQueries(t)
}

// TestGrafanaSQLOnCurrentClickHouse runs every dashboard query, macros expanded, through chDB
// (a current ClickHouse engine) over the demo schema: deploy/ runs ClickHouse 25.8, not 18.16.
func TestGrafanaSQLOnCurrentClickHouse(t *testing.T) {
	queries, names := dashboardQueries(t)
	if t.Failed() {
		return
	}
	cfg, err := config.Parse("<demo>", config.DemoYAML, nil)
	if err != nil {
		t.Fatal(err)
	}
	setup := schema.Statements(cfg)
	res := chtest.ChDB(t, append(slices.Clone(setup), queries...))
	for i, r := range res {
		if r.OK {
			continue
		}
		if i < len(setup) {
			t.Fatalf("chDB refused schema statement %d: %s\n%s", i, r.Error, setup[i])
		}
		j := i - len(setup)
		t.Errorf("%s: chDB (current ClickHouse) refused the query: %s\n%s", names[j], r.Error, queries[j])
	}
}

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(b)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^FROM golang:\S+ AS build$`),
		regexp.MustCompile(`CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main\.buildVersion=\$\{LAMBDA_VERSION\} -X main\.buildRevision=\$\{LAMBDA_REVISION\}" -o /lambda \./cmd/lambda`),
		regexp.MustCompile(`(?m)^ARG LAMBDA_REVISION=$`),
		regexp.MustCompile(`(?m)^COPY --from=build /lambda /lambda$`),
		regexp.MustCompile(`(?m)^USER [1-9][0-9]*(:[0-9]+)?$`), // numeric and not root
		regexp.MustCompile(`(?m)^ENTRYPOINT \["/lambda"\]$`),
	} {
		if !want.MatchString(df) {
			t.Errorf("Dockerfile: no line matching %s", want)
		}
	}
	if strings.Contains(df, "--mount=") {
		t.Errorf("Dockerfile: --mount needs BuildKit, which Debian's docker-compose does not use")
	}
	// The build needs the sources and what they embed.
	ignore, err := os.ReadFile(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(ignore), "\n") {
		line = strings.TrimSpace(line)
		for _, needed := range []string{"cmd", "shared", "dashboards", "speed", "batchlayer", "serving", "go.mod", "go.sum"} {
			if line == needed || line == needed+"/" || line == "*" {
				t.Errorf(".dockerignore: %q keeps %s out of the build context", line, needed)
			}
		}
	}
}
