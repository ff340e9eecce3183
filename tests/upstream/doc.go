// Package upstream tests syscare-build and upatch-manage on a real upstream C project,
// Lua 5.4.4 taken from Debian's source packages, with a real upstream bug fix.
package upstream
