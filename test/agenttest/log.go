package agenttest

import "sync"

// Log keeps an agent's stderr for a test to search and quote while the agent writes it: all
// of it, or with Max > 0 the last Max bytes at least (it trims to Max when it reaches twice
// that).
type Log struct {
	Max int

	mu sync.Mutex
	b  []byte
}

func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	if l.Max > 0 && len(l.b) > 2*l.Max {
		l.b = append([]byte(nil), l.b[len(l.b)-l.Max:]...)
	}
	return len(p), nil
}

// String is what the log holds.
func (l *Log) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// Tail is its last n bytes at most.
func (l *Log) Tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b[max(0, len(l.b)-n):])
}
