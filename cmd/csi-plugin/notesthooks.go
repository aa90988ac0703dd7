//go:build !modelcast_testhooks

package main

import (
	"flag"

	"github.com/modelcast/modelcast/pkg/driver"
)

// addTestHooks: the production binary has no test hooks (see testhooks.go).
func addTestHooks(*flag.FlagSet) func(*driver.Driver) { return func(*driver.Driver) {} }
