package driver

import "sync"

// keyLock serializes operations per key (a target path): many pods share one model, so
// locking per volume would serialize them all; locking per target only stops kubelet's
// retries from racing the call still in flight.
type keyLock struct {
	mu   sync.Mutex
	held map[string]struct{}
}

func newKeyLock() *keyLock { return &keyLock{held: map[string]struct{}{}} }

// TryLock takes key if it is free and returns the function that frees it.
func (l *keyLock) TryLock(key string) (unlock func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, busy := l.held[key]; busy {
		return nil, false
	}
	l.held[key] = struct{}{}
	return func() {
		l.mu.Lock()
		delete(l.held, key)
		l.mu.Unlock()
	}, true
}
