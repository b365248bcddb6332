package guest

import (
	"io/fs"
	"syscall"
)

// fileID is the device and inode of a file: a replaced file (ldconfig renames a new cache
// into place) gets a new one even within one mtime tick.
func fileID(fi fs.FileInfo) [2]uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return [2]uint64{st.Dev, st.Ino}
	}
	return [2]uint64{}
}
