package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/modelcast/modelcast/internal/units"
	"github.com/modelcast/modelcast/pkg/config"
	"github.com/modelcast/modelcast/pkg/coord"
)

const statusUsage = `usage: csi-plugin status [flags]

Shows model broadcasting as Redis holds it: per tenant and model, each chain's nodes in order
with where their bytes come from, progress, rate, time left and state (ready, staging, or gone:
its heartbeat stopped). It reads the node's configuration (broadcast.db; the password may come
from $MODELCAST_REDIS_PASSWORD instead) and never writes to Redis.
`

func runStatus(ctx context.Context, args []string) error {
	fs := toolFlagSet("status", statusUsage)
	configPath := fs.String("config", config.DefaultPath, "configuration file (broadcast.db says where Redis is)")
	addr := fs.String("redis", "", "Redis address host:port (default: broadcast.db.host and .port)")
	tenant := fs.String("tenant", "", "only this tenant (default: every tenant)")
	output := fs.String("o", "table", "output: table or json")
	watch := fs.Bool("watch", false, "refresh until interrupted")
	interval := fs.Duration("interval", 2*time.Second, "time between refreshes with --watch")
	if err := parseArgs(fs, args); err != nil {
		return err
	}
	var bad []error
	if *output != "table" && *output != "json" {
		bad = append(bad, fmt.Errorf("-o %q: want table or json", *output))
	}
	if *interval <= 0 {
		bad = append(bad, fmt.Errorf("--interval %s: must be positive", *interval))
	}
	if *addr != "" {
		if _, _, err := net.SplitHostPort(*addr); err != nil {
			bad = append(bad, fmt.Errorf("--redis %q: want host:port", *addr))
		}
	}
	if len(bad) > 0 {
		return usageErr(fs, errors.Join(bad...))
	}
	cfg, err := config.Load(*configPath, os.Getenv)
	if err != nil {
		return err
	}
	db := cfg.Broadcast.DB
	rc := coord.RedisConfig{Addr: net.JoinHostPort(db.Host, strconv.Itoa(db.Port)), URL: db.URL, Username: db.Username, Password: db.Password, TLS: db.TLS}
	if *addr != "" {
		rc.Addr, rc.URL = *addr, ""
	} else if db.Host == "" && db.URL == "" {
		return fmt.Errorf("no Redis configured: set broadcast.db.host in %s or pass --redis host:port", *configPath)
	}
	rdb, err := coord.NewRedisClient(rc)
	if err != nil {
		return err
	}
	defer rdb.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = coord.Ping(pctx, rdb)
	cancel()
	if err != nil {
		return err
	}
	co := coord.NewCoordinator(rdb)
	show := func() error {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		chains, err := co.Chains(qctx, *tenant)
		if err != nil {
			return err
		}
		if *output == "json" {
			return writeStatusJSON(os.Stdout, chains)
		}
		if *watch {
			fmt.Fprint(os.Stdout, "\033[H\033[2J") // clear the terminal
			fmt.Fprintf(os.Stdout, "%s  every %s\n\n", time.Now().Format(time.TimeOnly), *interval)
		}
		return writeStatusTable(os.Stdout, chains)
	}
	if !*watch {
		return show()
	}
	t := time.NewTicker(*interval)
	defer t.Stop()
	for {
		if err := show(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// statusNode is one node of a chain in status output.
type statusNode struct {
	Node     string  `json:"node"`
	Position int     `json:"position"` // 1-based, in the chain's order
	Alive    bool    `json:"alive"`
	Source   string  `json:"source"` // "OSS", the predecessor's name, or "" before the first byte
	Bytes    int64   `json:"bytes"`  // contiguous verified bytes
	Progress float64 `json:"progress"`
	Rate     float64 `json:"rate"`               // bytes per second, recently
	ETA      float64 `json:"etaSeconds"`         // seconds left at that rate (0: unknown or done)
	State    string  `json:"state"`              // ready, staging, gone
	Addr     string  `json:"peerAddr,omitempty"` // the data plane address of a live node
}

type statusChain struct {
	Tenant string       `json:"tenant"`
	Key    string       `json:"key"`
	URI    string       `json:"uri"`
	Size   int64        `json:"size"`
	Files  int          `json:"files"`
	Nodes  []statusNode `json:"nodes"`
}

func toStatus(c coord.ChainStatus) statusChain {
	out := statusChain{Tenant: c.Tenant, Key: c.Key, URI: c.Info.URI, Size: c.Info.Size, Files: c.Info.Files}
	for i, m := range c.Members {
		n := statusNode{Node: m.Node, Position: i + 1, Alive: m.Alive(), Source: m.Progress.From, Bytes: m.Progress.Bytes, Rate: m.Progress.Rate, Addr: m.Addr}
		switch {
		case !m.Alive():
			n.State = "gone"
		case m.Progress.Complete:
			n.State = "ready"
		default:
			n.State = "staging"
		}
		switch {
		case m.Progress.Complete:
			n.Progress = 1
		case out.Size > 0:
			n.Progress = float64(m.Progress.Bytes) / float64(out.Size)
		}
		if n.State == "staging" && n.Rate > 0 && out.Size > m.Progress.Bytes {
			n.ETA = float64(out.Size-m.Progress.Bytes) / n.Rate
		}
		if n.State != "staging" {
			n.Rate = 0
		}
		out.Nodes = append(out.Nodes, n)
	}
	return out
}

func writeStatusJSON(w io.Writer, chains []coord.ChainStatus) error {
	doc := struct {
		Chains []statusChain `json:"chains"`
	}{Chains: []statusChain{}}
	for _, c := range chains {
		doc.Chains = append(doc.Chains, toStatus(c))
	}
	return json.NewEncoder(w).Encode(doc)
}

func writeStatusTable(w io.Writer, chains []coord.ChainStatus) error {
	if len(chains) == 0 {
		_, err := fmt.Fprintln(w, "No model is being broadcast or held (no chain in Redis).")
		return err
	}
	for i, c := range chains {
		s := toStatus(c)
		if i > 0 {
			fmt.Fprintln(w)
		}
		ready := 0
		for _, n := range s.Nodes {
			if n.State == "ready" {
				ready++
			}
		}
		uri := s.URI
		if uri == "" {
			uri = "(model description expired)"
		}
		fmt.Fprintf(w, "%s  tenant %s  %s, %d files  %d of %d nodes ready  key %s\n", uri, s.Tenant, units.Bytes(s.Size), s.Files, ready, len(s.Nodes), s.Key)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  POS\tNODE\tSOURCE\tPROGRESS\tRATE\tLEFT\tSTATE")
		for _, n := range s.Nodes {
			source, rate, left := n.Source, "-", "-"
			if source == "" {
				source = "-"
			}
			if n.Rate > 0 {
				rate = units.Bytes(int64(n.Rate)) + "/s"
			}
			if n.ETA > 0 {
				left = (time.Duration(n.ETA) * time.Second).String()
			}
			fmt.Fprintf(tw, "  %d\t%s\t%s\t%.1f%%\t%s\t%s\t%s\n", n.Position, n.Node, source, n.Progress*100, rate, left, n.State)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}
