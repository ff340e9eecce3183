package proc

import (
	"encoding/binary"
	"fmt"
	"strconv"
)

// AuxvValue returns the value of entry typ (an AT_* number) in the auxiliary vector
// of process pid (/proc/PID/auxv), and whether the vector has it. The file is read
// with raw system calls, as the other /proc files here: os.ReadFile would register
// it with the runtime's poller first, five more calls, and the tracer reads it while
// a thread of the process is held stopped.
func AuxvValue(pid int, typ uint64) (uint64, bool, error) {
	buf := getBuf()
	defer putBuf(buf)
	data, err := readProcFile("/proc/"+strconv.Itoa(pid)+"/auxv", buf)
	if err != nil {
		return 0, false, fmt.Errorf("auxiliary vector of pid %d: %w", pid, err)
	}
	// Pairs of native words (type, value), up to AT_NULL.
	for i := 0; i+16 <= len(data); i += 16 {
		t := binary.LittleEndian.Uint64(data[i:])
		if t == 0 {
			break
		}
		if t == typ {
			return binary.LittleEndian.Uint64(data[i+8:]), true, nil
		}
	}
	return 0, false, nil
}
