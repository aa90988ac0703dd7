// Package agent is `csi-plugin agent`: this node's model code without CSI (the tmpfs cache,
// the broadcast chain and its data plane) staging one model and serving it to peers, and the
// JSON lines it prints, one Event a line. The demo, the benchmarks and the test harnesses
// (test/agenttest) read those lines with this package's Event.
package agent

// Event is one line of the agent's output.
type Event struct {
	Event     string  `json:"event"` // one of the Event* kinds
	Node      string  `json:"node"`
	Model     string  `json:"model,omitempty"`
	Done      int64   `json:"done,omitempty"`
	Total     int64   `json:"total,omitempty"`
	From      string  `json:"from,omitempty"`
	Rate      float64 `json:"rate,omitempty"` // bytes per second since the last line
	Seconds   float64 `json:"seconds,omitempty"`
	FromOSS   int64   `json:"fromOSS"`
	FromPeers int64   `json:"fromPeers"`
	Served    int64   `json:"served"`
	Verified  bool    `json:"verified,omitempty"` // every file re-read and its CRC-64 matched the manifest
	Dir       string  `json:"dir,omitempty"`
	Addr      string  `json:"addr,omitempty"` // the peer data plane's address
	HTTP      string  `json:"http,omitempty"` // where /metrics, /healthz and /readyz answer
	Error     string  `json:"error,omitempty"`
	// CPU is the agent's own CPU time so far, user + system of every thread, in core-seconds
	// (getrusage RUSAGE_SELF): benchmarks take what relaying costs from it.
	CPU float64 `json:"cpu"`
	// VerifyCPU, in the ready line with --verify, is the CPU time of the verify pass alone
	// (the thread that re-read every file: getrusage RUSAGE_THREAD after minus before), so
	// benchmarks can leave the check out of what a node spends on the model.
	VerifyCPU float64 `json:"verifyCPU,omitempty"`
	// VerifySeconds, in the ready line with --verify, is the wall time of the verify pass: the
	// line comes that much after the model was staged (what a pod would have waited for).
	VerifySeconds float64 `json:"verifySeconds,omitempty"`
	// Reason, Signal and Phase are the exit line's (event "exit", always the last line): why
	// the agent stopped ("signal", with Signal "terminated" or "interrupt"; "done", ready with
	// --exit; "error", with Error) and what it was doing then ("starting", "staging",
	// "verifying", "ready", "serving"). Its fromOSS and fromPeers are the bytes received by
	// then.
	Reason string `json:"reason,omitempty"`
	Signal string `json:"signal,omitempty"`
	Phase  string `json:"phase,omitempty"`
}

// The kinds of line (Event.Event), in the order an agent prints them.
const (
	EventStart    = "start"    // the driver is up: Model, Addr, HTTP
	EventProgress = "progress" // every interval while staging: Done of Total, From, Rate
	EventError    = "error"    // staging or --verify failed: Error
	EventReady    = "ready"    // staged (and verified): Seconds, Dir, Total, From, Verified, VerifyCPU
	EventStop     = "stop"     // a signal ended serving
	EventExit     = "exit"     // always the last line: Reason, Signal, Phase, Error
)

// What the agent was doing when it stopped (the exit line's phase).
const (
	PhaseStarting  = "starting"  // reading its configuration, opening the cache, the chain, the HTTP server
	PhaseStaging   = "staging"   // listing the model and receiving its bytes
	PhaseVerifying = "verifying" // --verify: reading every file again
	PhaseReady     = "ready"     // ready, exiting (--exit)
	PhaseServing   = "serving"   // ready, serving peers until a signal
)

// Why the agent stopped (the exit line's reason).
const (
	ExitSignal = "signal" // SIGTERM or SIGINT (signal names it): a requested stop, exit status 0
	ExitDone   = "done"   // ready, with --exit
	ExitError  = "error"  // error says what failed; exit status 1
)
