// Package health runs the health checks that gate a hot patch: a command run without a
// shell, with a clean environment, under a timeout that kills it and everything it
// started, with its output captured up to a bound.
package health
