package metrics

import (
	"encoding/json"
	"errors"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/modelcast/modelcast/pkg/broadcast"
	"github.com/modelcast/modelcast/pkg/cache"
)

// nodeFamilies gathers every metric family a node exposes, after one of each observation.
func nodeFamilies(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	store, err := cache.New(cache.Config{Root: t.TempDir(), MemoryReserve: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(store.Close)
	node, err := broadcast.New(broadcast.Config{NodeID: "n1", Addr: "127.0.0.1:0"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	m := New("test")
	m.WatchNode(store, node)
	m.ObserveCall("NodePublishVolume", "OK", time.Millisecond)
	m.ObserveStaging(cache.StageResult{Seconds: 3})
	m.ObserveStaging(cache.StageResult{Seconds: 1, Err: errors.New("boom")})
	m.OSSRequestError("get", "SlowDown")
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// TestNames: modelcast's metrics follow Prometheus conventions — counters end in _total,
// durations are histograms in seconds, sizes are in bytes — and every one has help.
func TestNames(t *testing.T) {
	for name, f := range nodeFamilies(t) {
		if !strings.HasPrefix(name, "modelcast_") {
			continue
		}
		if f.GetHelp() == "" {
			t.Errorf("%s has no help", name)
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			if !strings.HasSuffix(name, "_total") {
				t.Errorf("counter %s does not end in _total", name)
			}
		case dto.MetricType_HISTOGRAM:
			if !strings.HasSuffix(name, "_seconds") {
				t.Errorf("histogram %s is not in seconds", name)
			}
		case dto.MetricType_GAUGE:
			if strings.HasSuffix(name, "_total") {
				t.Errorf("gauge %s ends in _total", name)
			}
		}
		if strings.Contains(name, "byte") && !strings.HasSuffix(strings.TrimSuffix(name, "_total"), "_bytes") {
			t.Errorf("%s counts bytes but does not end in _bytes", name)
		}
	}
}

// TestDashboard: every metric and label the Grafana dashboard queries exists.
func TestDashboard(t *testing.T) {
	fams := nodeFamilies(t)
	labels := map[string][]string{} // series name → its labels
	for name, f := range fams {
		var ls []string
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if !slices.Contains(ls, l.GetName()) {
					ls = append(ls, l.GetName())
				}
			}
		}
		labels[name] = ls
		if f.GetType() == dto.MetricType_HISTOGRAM {
			labels[name+"_bucket"] = append(slices.Clone(ls), "le")
			labels[name+"_count"] = ls
			labels[name+"_sum"] = ls
		}
	}
	data, err := os.ReadFile("../../deploy/grafana/modelcast-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Title  string `json:"title"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	var exprs []string
	queried := 0
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
			queried++
		}
	}
	for _, v := range dash.Templating.List {
		exprs = append(exprs, v.Definition)
	}
	if queried < 10 {
		t.Fatalf("only %d queries in the dashboard", queried)
	}
	series := regexp.MustCompile(`(modelcast_[a-z_]+)(\{([^}]*)\})?`)
	matcher := regexp.MustCompile(`([a-z_]+)\s*(=~|!=|!~|=)`)
	for _, e := range exprs {
		for _, m := range series.FindAllStringSubmatch(e, -1) {
			have, ok := labels[m[1]]
			if !ok {
				t.Errorf("the dashboard queries %s, which modelcast does not export (in %s)", m[1], e)
				continue
			}
			for _, l := range matcher.FindAllStringSubmatch(m[3], -1) {
				if l[1] != "instance" && !slices.Contains(have, l[1]) {
					t.Errorf("the dashboard selects %s by %q, a label it does not have (in %s)", m[1], l[1], e)
				}
			}
		}
	}
}
