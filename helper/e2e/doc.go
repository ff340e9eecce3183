// Package e2e holds syscare-helper's end-to-end tests: the real helper, activated by a
// private dbus-daemon, driven through the real syscare CLI, patching real processes with
// patches compiled from upatch.h at test time, against a target RPM installed in a
// scratch root. The root is a production host: the RPM ships stripped files, no
// debuginfo is installed, and the patches carry their targets' offsets (made
// self-contained from debug copies the root never sees).
package e2e
