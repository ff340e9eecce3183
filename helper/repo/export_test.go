package repo

import "fmt"

// Internals that resolve_published_test.go (package repo_test) reaches.
var (
	Host       = host
	Decompress = decompress
	RPMDBPath  = rpmDBPath
)

// MetaFile returns the location and checksum repomd.xml gives for the metadata of type typ.
func MetaFile(repomd []byte, typ string) (href, sum string, err error) {
	md, err := parseRepomd(repomd)
	if err != nil {
		return "", "", err
	}
	d := md.find(typ)
	if d == nil {
		return "", "", fmt.Errorf("no %s in repomd.xml", typ)
	}
	return d.Location.Href, d.Checksum.Value, nil
}
