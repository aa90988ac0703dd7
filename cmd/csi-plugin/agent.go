package main

import (
	"context"
	"os"
	"time"

	"github.com/modelcast/modelcast/pkg/agent"
	"github.com/modelcast/modelcast/pkg/config"
)

const agentUsage = `usage: csi-plugin agent [flags] oss://bucket/prefix/

Runs this node's model code without CSI: the tmpfs cache, the broadcast chain and its data
plane. It stages the model (from OSS or peers, as the chain decides), prints one JSON line per
event on stdout (start, progress, ready or error), and then keeps serving the model to peers
until SIGTERM/SIGINT, when it leaves the chain (stop). Its last line, however it ends, is exit:
why it stopped (reason signal, done or error) and what it was doing (phase); a signal is a clean
stop (exit status 0). The demo and the benchmarks run one agent per node. Credentials and
endpoint as for fetch (OSS_* variables).
`

// runAgent is csi-plugin agent: its flags, then pkg/agent's run loop, its lines on stdout.
func runAgent(ctx context.Context, args []string) error {
	opts, err := parseAgentFlags(args)
	if err != nil {
		return err
	}
	return agent.Run(ctx, opts, os.Stdout)
}

// parseAgentFlags reads the agent's flags and its one argument, the model (a usage error
// without it).
func parseAgentFlags(args []string) (agent.Options, error) {
	fs := toolFlagSet("agent", agentUsage)
	var opts agent.Options
	var node NodeOptions
	node.AddFlags(fs)
	fs.StringVar(&opts.ConfigPath, "config", config.DefaultPath, "configuration file")
	fs.StringVar(&opts.Tenant, "tenant", "", "broadcast tenant (default: broadcast.tenant)")
	fs.DurationVar(&opts.Interval, "interval", 500*time.Millisecond, "time between progress lines")
	fs.BoolVar(&opts.Verify, "verify", false, "when ready, read every file again and check its CRC-64 against the manifest")
	fs.BoolVar(&opts.Exit, "exit", false, "exit once ready instead of serving peers until a signal")
	opts.Hooks = addTestHooks(fs)
	fs.StringVar(&opts.HTTPEndpoint, "http-endpoint", "", "where to serve /metrics, /healthz and /readyz (host:port, port 0 for any; empty: off)")
	if err := parseArgs(fs, args, "oss://bucket/prefix/"); err != nil {
		return opts, err
	}
	if err := node.Validate(); err != nil {
		return opts, usageErr(fs, err)
	}
	opts.NodeID, opts.NodeIP, opts.Model = node.NodeID, node.NodeIP, fs.Arg(0)
	return opts, nil
}
