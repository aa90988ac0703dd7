package driver

import (
	"regexp"
	"strings"
)

// requestIDs match the OSS request ids an error's text carries: ossclient's ", request id X"
// and " (request id X)", and the SDK's own "Request Id: X." line.
var requestIDs = []*regexp.Regexp{
	regexp.MustCompile(` ?\(request id [^\s()]+\)`),
	regexp.MustCompile(`,? request id [^\s(),]+`),
	regexp.MustCompile(`\s*Request Id: [^\s.]*\.?`),
}

// withoutRequestIDs is msg without OSS request ids: text that people read in a pod's Events
// (ours, and kubelet's FailedMount carrying a call's message). Every failed request has its
// own id, so a message with one never repeats: Kubernetes cannot aggregate identical failures
// into one Event with a count. The ids stay in the plugin's log (the failed call's error).
func withoutRequestIDs(msg string) string {
	if !strings.Contains(msg, "equest") {
		return msg
	}
	for _, re := range requestIDs {
		msg = re.ReplaceAllString(msg, "")
	}
	return msg
}
