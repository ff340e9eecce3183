package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/sirupsen/logrus"
)

// aliases name the journal fields that the helper's log keys stand for, so that every
// entry about a patch operation can be selected the same way (PATCH=, TARGET=, PID=,
// OPERATION=) whatever the code that logged it called its key.
var aliases = map[string]string{
	"patch": "PATCH", "ids": "PATCH", "uuid": "PATCH_UUID",
	"target": "TARGET",
	"pid":    "PID",
	"method": "OPERATION", "action": "OPERATION", "op": "OPERATION", "operation": "OPERATION",
}

// Hook is a logrus hook that writes every entry to the journal.
type Hook struct {
	client     *Client
	identifier string
}

// NewHook sends to the journal socket at path, entries tagged with identifier
// (SYSLOG_IDENTIFIER; the program's name when empty).
func NewHook(path, identifier string) (*Hook, error) {
	c, err := Dial(path)
	if err != nil {
		return nil, err
	}
	if identifier == "" {
		identifier = filepath.Base(os.Args[0])
	}
	return &Hook{client: c, identifier: identifier}, nil
}

// Levels is every level: the logger's own level decides what reaches the hook.
func (h *Hook) Levels() []logrus.Level { return logrus.AllLevels }

// Close releases the socket.
func (h *Hook) Close() error { return h.client.Close() }

// Fire sends the entry. The message and fields go as they are; a key the aliases do
// not know becomes its upper-case journal name.
func (h *Hook) Fire(e *logrus.Entry) error {
	fields := []Field{
		{"MESSAGE", e.Message},
		{"PRIORITY", fmt.Sprint(Priority(e.Level))},
		{"SYSLOG_IDENTIFIER", h.identifier},
	}
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	seen := map[string]bool{}
	for _, k := range keys {
		name := aliases[k]
		if name == "" {
			name = FieldName(k)
		}
		// A second key of the same field keeps the first one's values; MESSAGE and the
		// others above are the hook's.
		if name == "" || seen[name] || name == "MESSAGE" || name == "PRIORITY" || name == "SYSLOG_IDENTIFIER" {
			continue
		}
		seen[name] = true
		switch v := e.Data[k].(type) {
		case []string:
			// The journal keeps a field given several times with each value, so that
			// PATCH=a and PATCH=b both select an operation on [a b].
			for _, s := range v {
				fields = append(fields, Field{name, s})
			}
		case error:
			fields = append(fields, Field{name, v.Error()})
		default:
			fields = append(fields, Field{name, fmt.Sprint(v)})
		}
	}
	return h.client.Send(fields)
}

// Priority maps a logrus level to the journal's (syslog) priority.
func Priority(l logrus.Level) int {
	switch l {
	case logrus.PanicLevel, logrus.FatalLevel:
		return PriCrit
	case logrus.ErrorLevel:
		return PriErr
	case logrus.WarnLevel:
		return PriWarning
	case logrus.InfoLevel:
		return PriInfo
	default:
		return PriDebug
	}
}
