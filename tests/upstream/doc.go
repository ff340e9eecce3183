// Package upstream tests syscare-build, upatch-manage and the helper on real upstream
// projects taken from Debian's source packages (Lua, libyaml, TinyXML-2, uchardet,
// OpenSSL), each with a real upstream bug fix hot patched into running processes.
package upstream
