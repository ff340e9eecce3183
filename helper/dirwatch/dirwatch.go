// Package dirwatch tells syscare-helper when the patch directories change (rpm installing
// or erasing a patch RPM), so that the manager rescans them without being asked.
package dirwatch

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Watch calls fn after entries of dir are created, removed, renamed or written, at
// most once per settle period, until ctx ends. It returns once the watch is armed.
func Watch(ctx context.Context, dir string, settle time.Duration, fn func()) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	// IN_CLOSE_WRITE catches patch.json rewritten in place; the other events catch
	// patch directories installed or erased by rpm (which renames into place).
	mask := uint32(unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_FROM | unix.IN_MOVED_TO |
		unix.IN_CLOSE_WRITE | unix.IN_DELETE_SELF | unix.IN_MOVE_SELF)
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		unix.Close(fd)
		return fmt.Errorf("inotify %s: %w", dir, err)
	}
	// Files land inside new patch directories after the directory itself: watch each
	// subdirectory too (adding a watch twice is harmless).
	sub := func() {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.IsDir() {
				unix.InotifyAddWatch(fd, dir+"/"+e.Name(), unix.IN_CLOSE_WRITE|unix.IN_MOVED_TO|unix.IN_CREATE|unix.IN_DELETE)
			}
		}
	}
	sub()
	f := os.NewFile(uintptr(fd), "inotify")
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	events := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 64*1024)
		for {
			if _, err := f.Read(buf); err != nil {
				close(events)
				return
			}
			sub()
			select {
			case events <- struct{}{}:
			default:
			}
		}
	}()
	go func() {
		for range events {
			// Let rpm finish writing the whole directory before reading it.
			time.Sleep(settle)
			select {
			case <-events:
			default:
			}
			// The reader stops only once the closer has run: an event read before
			// that, or this wait, may outlast ctx, which ends the calls at once.
			if ctx.Err() != nil {
				return
			}
			fn()
		}
	}()
	return nil
}
