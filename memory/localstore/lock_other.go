//go:build !unix

package localstore

import (
	"os"
	"path/filepath"
)

// lockDir creates dir/LOCK; without flock the single-process rule is not enforced on this platform.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o640)
}
