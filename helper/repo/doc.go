// Package repo resolves which hot patch RPMs in RPM repositories apply to this host and
// publishes patch RPMs with updateinfo advisories into a repository.
package repo
