package cache

import (
	"errors"
	"fmt"

	"github.com/modelcast/modelcast/internal/units"
)

var (
	// ErrNoSpace: the model does not fit in the cache's tmpfs or in the node's available memory,
	// even after evicting every model nobody holds.
	ErrNoSpace = errors.New("not enough room for the model")
	// ErrStaging: the caller stopped waiting while the model is still being staged; the staging
	// goes on and a later Acquire joins it. Returned as a *StagingError.
	ErrStaging = errors.New("model still staging")
	// ErrHolderConflict: the holder already holds another model.
	ErrHolderConflict = errors.New("holder already holds another model")
)

// StagingError reports how far a staging got when its caller stopped waiting.
type StagingError struct {
	Model       string // oss:// path
	Done, Total int64
	From        string
	Err         error // why the caller stopped waiting (its context's error)
}

// Error reads "staging oss://b/qwen/: 61.2 GB of 135.4 GB from OSS". It has no '%': kubelet
// posts it in a FailedMount Event through a format function, which would mangle one.
func (e *StagingError) Error() string {
	s := "staging " + e.Model
	if e.Total > 0 {
		s += fmt.Sprintf(": %s of %s", units.Bytes(e.Done), units.Bytes(e.Total))
	}
	if e.From != "" {
		s += " from " + e.From
	}
	return s
}

// Is makes errors.Is(err, ErrStaging) true.
func (e *StagingError) Is(target error) bool { return target == ErrStaging }

// Unwrap returns the context error that ended the wait.
func (e *StagingError) Unwrap() error { return e.Err }
