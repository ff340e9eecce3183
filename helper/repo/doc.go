// Package repo is the host's side of hot patch repositories: it resolves which hot patch
// RPMs in the configured RPM repositories apply to this host. Publishing into a
// repository is the packager's side (rpmbuild/publish); it reads RPM files and
// existing metadata through this package (published.go) so both sides share one rule
// for what a hot patch package is.
package repo
