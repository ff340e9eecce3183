package main

import (
	"io"
	"os"

	"github.com/sirupsen/logrus"

	"github.com/syscare/syscare/helper/journal"
)

// useJournal sends the log to the journal when systemd runs the helper with its stderr
// connected to the journal (JOURNAL_STREAM names that stream): entries then carry their
// priority and fields (PATCH, TARGET, PID, OPERATION) instead of being one line of text.
// Anywhere else (a terminal, tests/sandbox, a bus-activated helper without systemd) the
// log stays text on stderr. It returns what to close at exit.
func useJournal(log *logrus.Logger) io.Closer {
	if !journal.StderrIsJournal() {
		return nil
	}
	if _, err := os.Stat(journal.DefaultSocket); err != nil {
		return nil
	}
	hook, err := journal.NewHook(journal.DefaultSocket, "syscare-helper")
	if err != nil {
		log.WithError(err).Warn("journal unavailable; logging text to stderr")
		return nil
	}
	log.AddHook(hook)
	log.SetOutput(io.Discard)
	return hook
}
