package ossemu

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// serveAdmin serves the /-/ endpoints of Options.Admin, listed in the
// package documentation.
func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	switch r.Method + " " + r.URL.Path {
	case "GET /-/stats":
		writeJSON(w, s.Stats())
	case "POST /-/reset-stats":
		s.ResetStats()
		w.WriteHeader(http.StatusNoContent)
	case "POST /-/faults":
		f, err := decodeFault(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.InjectFault(f)
		w.WriteHeader(http.StatusNoContent)
	case "DELETE /-/faults":
		s.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	case "POST /-/egress":
		bps, err := ParseRate(r.URL.Query().Get("bps"))
		if err != nil {
			http.Error(w, "bps: "+err.Error(), http.StatusBadRequest)
			return
		}
		s.SetEgressRate(bps)
		w.WriteHeader(http.StatusNoContent)
	case "GET /-/profile":
		writeJSON(w, s.Profile())
	case "POST /-/profile":
		p := s.Profile() // fields the body leaves out keep their values
		if err := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<16)).Decode(&p); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.SetProfile(p)
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "unknown admin endpoint "+r.Method+" "+r.URL.Path, http.StatusNotFound)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	_, _ = w.Write(append(b, '\n'))
}

// decodeFault reads a Fault whose delay may be a duration string.
func decodeFault(r *http.Request) (Fault, error) {
	var in struct {
		Fault
		Delay json.RawMessage `json:"delay"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return Fault{}, fmt.Errorf("decode fault: %w", err)
	}
	f := in.Fault
	if len(in.Delay) > 0 {
		var text string
		if err := json.Unmarshal(in.Delay, &text); err == nil {
			d, err := time.ParseDuration(text)
			if err != nil {
				return Fault{}, fmt.Errorf("fault delay: %w", err)
			}
			f.Delay = d
		} else if err := json.Unmarshal(in.Delay, &f.Delay); err != nil {
			return Fault{}, fmt.Errorf("fault delay: %w", err)
		}
	}
	return f, nil
}
