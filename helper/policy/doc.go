// Package policy reads /etc/syscare/upgrade.conf, the policy of unattended hot patch
// upgrades (which advisories, which CVEs, the health gate, accept or not, the
// maintenance window), and answers what it allows; a broken file is an error naming
// its line, never a silent default.
package policy
