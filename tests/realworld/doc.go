// Package realworld hot-patches real multi-process, multi-threaded servers (Redis and
// nginx, built from Debian 12's source packages at test time) with upatch-manage, as an
// operator would, while clients keep them busy. The servers run as a production host
// has them: stripped, with no debuginfo where the loader looks; the hand-written
// patches are made self-contained from the debug copies kept at build time.
package realworld
