// Package promtest reads a Prometheus /metrics endpoint over HTTP into samples that tests can
// look up by name and labels.
package promtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Samples maps `name{k="v",…}` (labels sorted) to a value. Histograms give name_count and
// name_sum.
type Samples struct {
	Values map[string]float64
	Text   string // the whole answer, as served
}

// Scrape GETs url and parses the text exposition format.
func Scrape(ctx context.Context, url string) (*Samples, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", url, res.Status, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", url, err)
	}
	s := &Samples{Values: map[string]float64{}, Text: string(body)}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			labels := labelPairs(m.GetLabel())
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				s.Values[key(name, labels)] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				s.Values[key(name, labels)] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				s.Values[key(name+"_count", labels)] = float64(m.GetHistogram().GetSampleCount())
				s.Values[key(name+"_sum", labels)] = m.GetHistogram().GetSampleSum()
			case dto.MetricType_UNTYPED:
				s.Values[key(name, labels)] = m.GetUntyped().GetValue()
			}
		}
	}
	return s, nil
}

// Get returns the sample of name with the given label pairs ("k", "v", …), 0 when absent.
func (s *Samples) Get(name string, labels ...string) float64 {
	return s.Values[key(name, pairs(labels))]
}

// Has reports whether the sample exists.
func (s *Samples) Has(name string, labels ...string) bool {
	_, ok := s.Values[key(name, pairs(labels))]
	return ok
}

func pairs(kv []string) []string {
	var out []string
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, fmt.Sprintf("%s=%q", kv[i], kv[i+1]))
	}
	slices.Sort(out)
	return out
}

func labelPairs(ls []*dto.LabelPair) []string {
	out := make([]string, 0, len(ls))
	for _, l := range ls {
		out = append(out, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	slices.Sort(out)
	return out
}

func key(name string, labels []string) string {
	return name + "{" + strings.Join(labels, ",") + "}"
}
