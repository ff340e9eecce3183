// Package realworld hot-patches real multi-process, multi-threaded servers (Redis and
// nginx, built from Debian 12's source packages at test time) with upatch-manage, as an
// operator would, while clients keep them busy.
package realworld
