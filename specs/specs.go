// Package specs holds the spec-file templates of the RPMs syscare build generates.
package specs

import _ "embed"

// UserPatch is the text/template of a user-space hot patch RPM spec. Its data is
// patchrpm.specData: the patch metadata, the payload file names and the sources.
//
//go:embed upatch.spec.tmpl
var UserPatch string
