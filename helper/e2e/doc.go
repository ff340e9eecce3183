// Package e2e holds syscare-helper's end-to-end tests: the real helper, activated by a
// private dbus-daemon, driven through the real syscare CLI, patching real processes with
// patches compiled from upatch.h at test time, against a target RPM installed in a
// scratch root.
package e2e
