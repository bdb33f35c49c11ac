package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, for VACUUM INTO

	"github.com/loom-dev/loom/memory/localstore"
)

const backupUsage = `Usage: loom backup --to DIR [--data-dir D]

Backs up the embedded data dir (SQLite databases and the embedded vector store; 'loom serve' without
--database-url) into DIR, consistently, while 'loom serve' keeps running on it: each database is copied as one
transaction with VACUUM INTO, the vector store's log up to its last whole write. The backup holds every write
acknowledged before the command started. DIR must be new or empty. MANIFEST.json, listing every file with its
size and SHA-256, is written last: a backup without one is incomplete.
`

const restoreUsage = `Usage: loom restore --from DIR [--data-dir D]

Restores a backup made by 'loom backup' into the data dir D, which must be new or empty (stop 'loom serve' and
move the old data dir aside first). The manifest and every file's size and SHA-256 are checked before anything
is written; the files are then copied into a temporary directory beside D and renamed into place, so a failure
leaves D as it was.
`

// The data dir on embedded defaults, as `loom serve` lays it out (openDB's callers and buildMemory).
var (
	// backupDatabases are its SQLite databases, in the order backup copies them: a referrer before what it
	// refers to (blueprints name agents, agents name memory namespaces; the memory log is copied last), so what a
	// copied record referred to when it was written is in a later copy unless it was deleted meanwhile.
	backupDatabases = []string{"auth.db", "orchestrator.db", "agent.db"}
	// backupMemoryLog is the embedded vector store's log, slash-separated and relative to the data dir.
	backupMemoryLog = "memory/" + localstore.LogFile
	// backupIgnored are files of the data dir that hold nothing a backup needs: SQLite's WAL, shared-memory and
	// journal files (VACUUM INTO reads through them), the vector store's lock and an unfinished compaction.
	backupIgnored = []string{"memory/LOCK", backupMemoryLog + ".tmp"}
)

// backupManifestName is the backup's table of contents, written last.
const backupManifestName = "MANIFEST.json"

// backupFormat is the version of the backup layout; restore refuses any other.
const backupFormat = 1

// backupManifest describes a backup: the contents of its MANIFEST.json.
type backupManifest struct {
	Format      int    `json:"format"`
	LoomVersion string `json:"loom_version"`
	// StartTime is when the backup began: every write acknowledged before it is in the backup (the recovery
	// point); writes acknowledged between StartTime and EndTime may or may not be.
	StartTime time.Time `json:"start_time"`
	EndTime   time.Time `json:"end_time"`
	// DataDir is the data dir that was backed up, for people.
	DataDir string            `json:"data_dir"`
	Files   []backupFileEntry `json:"files"`
}

// backupFileEntry is one file of a backup.
type backupFileEntry struct {
	// Path is slash-separated and relative to the backup, and to the data dir it is restored into.
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// backupCmd runs `loom backup`.
func backupCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loom backup", flag.ContinueOnError)
	dataDir := fs.String("data-dir", envOr(getenv, "LOOM_DATA_DIR", "./loom-data"), "data directory to back up (env LOOM_DATA_DIR)")
	to := fs.String("to", "", "directory to write the backup into: new or empty (required)")
	if err := parseCmdFlags(fs, backupUsage, args, stdout, stderr); err != nil {
		return err
	}
	if *to == "" {
		fmt.Fprint(stderr, backupUsage)
		return errors.New("backup: --to is required")
	}
	if getenv("LOOM_DATABASE_URL") != "" {
		fmt.Fprintln(stderr, "loom backup: note: LOOM_DATABASE_URL is set; this backs up the embedded data dir only, not PostgreSQL (use pg_dump for that)")
	}
	_, err := backup(ctx, *dataDir, *to, stdout)
	return err
}

// restoreCmd runs `loom restore`.
func restoreCmd(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("loom restore", flag.ContinueOnError)
	dataDir := fs.String("data-dir", envOr(getenv, "LOOM_DATA_DIR", "./loom-data"), "data directory to restore into: new or empty (env LOOM_DATA_DIR)")
	from := fs.String("from", "", "backup directory written by 'loom backup' (required)")
	if err := parseCmdFlags(fs, restoreUsage, args, stdout, stderr); err != nil {
		return err
	}
	if *from == "" {
		fmt.Fprint(stderr, restoreUsage)
		return errors.New("restore: --from is required")
	}
	return restore(ctx, *from, *dataDir, stdout, stderr)
}

// parseCmdFlags parses args: --help prints usage and flags to stdout and returns flag.ErrHelp (exit status 0); a
// bad flag prints them to stderr and returns the error.
func parseCmdFlags(fs *flag.FlagSet, usage string, args []string, stdout, stderr io.Writer) error {
	if err := parseCmdArgs(fs, usage, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
		printCmdUsage(fs, usage, stderr)
		return err
	}
	return nil
}

// parseCmdArgs is parseCmdFlags for commands that take arguments after their flags.
func parseCmdArgs(fs *flag.FlagSet, usage string, args []string, stdout, stderr io.Writer) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if err != nil {
		w := stderr
		if errors.Is(err, flag.ErrHelp) {
			w = stdout
		}
		printCmdUsage(fs, usage, w)
	}
	return err
}

func printCmdUsage(fs *flag.FlagSet, usage string, w io.Writer) {
	fmt.Fprint(w, usage, "\nFlags:\n")
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// backup copies the data files of dataDir into the new or empty directory to and returns the manifest written
// there last. It is safe while `loom serve` runs on dataDir. On error it removes what it wrote.
func backup(ctx context.Context, dataDir, to string, out io.Writer) (_ backupManifest, err error) {
	start := time.Now()
	if dataDir, err = filepath.Abs(dataDir); err != nil {
		return backupManifest{}, fmt.Errorf("backup: %w", err)
	}
	if to, err = filepath.Abs(to); err != nil {
		return backupManifest{}, fmt.Errorf("backup: %w", err)
	}
	files, err := backupDataFiles(dataDir)
	if err != nil {
		return backupManifest{}, fmt.Errorf("backup: %w", err)
	}
	if len(files) == 0 {
		return backupManifest{}, fmt.Errorf("backup: %s holds no Loom data (with --database-url, back up PostgreSQL with pg_dump instead)", dataDir)
	}
	if rel, err := filepath.Rel(dataDir, to); err == nil && !strings.HasPrefix(rel, "..") {
		return backupManifest{}, fmt.Errorf("backup: --to %s is inside the data dir", to)
	}
	if names, err := dirNames(to); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return backupManifest{}, fmt.Errorf("backup: %w", err)
	} else if len(names) > 0 {
		return backupManifest{}, fmt.Errorf("backup: %s is not empty (holds %s): a backup never overwrites another; choose a new directory", to, joinNames(names))
	}
	_, statErr := os.Stat(to)
	if err := os.MkdirAll(to, 0o750); err != nil {
		return backupManifest{}, fmt.Errorf("backup: %w", err)
	}
	var written []string // what to remove on failure, in creation order
	if statErr != nil {
		written = append(written, to)
	}
	defer func() {
		if err != nil {
			for _, p := range slices.Backward(written) {
				os.Remove(p)
			}
		}
	}()

	m := backupManifest{Format: backupFormat, LoomVersion: buildVersion(), StartTime: start.UTC(), DataDir: dataDir}
	fmt.Fprintf(out, "backing up %s into %s\n", dataDir, to)
	for _, rel := range files {
		t0 := time.Now()
		src, dst := filepath.Join(dataDir, filepath.FromSlash(rel)), filepath.Join(to, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
			return backupManifest{}, fmt.Errorf("backup: %w", err)
		}
		if filepath.Dir(dst) != to && !slices.Contains(written, filepath.Dir(dst)) {
			written = append(written, filepath.Dir(dst))
		}
		written = append(written, dst)
		var detail string
		if rel == backupMemoryLog {
			c, err := copyMemoryLog(filepath.Dir(src), dst)
			if err != nil {
				return backupManifest{}, fmt.Errorf("backup: %s: %w", rel, err)
			}
			detail = fmt.Sprintf("%d writes", c.Frames)
			if c.TailBytes > 0 {
				detail += fmt.Sprintf(", a %d-byte write in progress left out", c.TailBytes)
			}
		} else {
			if err := vacuumInto(ctx, src, dst); err != nil {
				return backupManifest{}, fmt.Errorf("backup: %s: %w", rel, err)
			}
			detail = "VACUUM INTO, integrity ok"
		}
		f, err := hashBackupFile(dst, rel)
		if err != nil {
			return backupManifest{}, fmt.Errorf("backup: %w", err)
		}
		m.Files = append(m.Files, f)
		fmt.Fprintf(out, "  %-20s %10s  %s  %v\n", rel, humanBytes(f.Size), detail, time.Since(t0).Round(time.Millisecond))
	}
	syncDirs := []string{filepath.Join(to, "memory"), to}
	if statErr != nil {
		syncDirs = append(syncDirs, filepath.Dir(to)) // the new directory's own entry
	}
	for _, dir := range syncDirs {
		if err := fsyncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return backupManifest{}, fmt.Errorf("backup: %w", err)
		}
	}
	m.EndTime = time.Now().UTC()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return backupManifest{}, fmt.Errorf("backup: %w", err)
	}
	mpath := filepath.Join(to, backupManifestName)
	written = append(written, mpath+".tmp", mpath)
	if err := writeFileDurably(mpath+".tmp", append(b, '\n')); err != nil {
		return backupManifest{}, fmt.Errorf("backup: manifest: %w", err)
	}
	if err := os.Rename(mpath+".tmp", mpath); err != nil {
		return backupManifest{}, fmt.Errorf("backup: manifest: %w", err)
	}
	if err := fsyncDir(to); err != nil {
		return backupManifest{}, fmt.Errorf("backup: manifest: %w", err)
	}
	var total int64
	for _, f := range m.Files {
		total += f.Size
	}
	fmt.Fprintf(out, "backup complete: %d files, %s, in %v; it holds every write acknowledged before %s\n",
		len(m.Files), humanBytes(total), time.Since(start).Round(time.Millisecond), m.StartTime.Format(time.RFC3339))
	return m, nil
}

// backupDataFiles lists the files of dataDir a backup copies, slash-separated, in backup order. A file loom does not
// know is an error naming it: a backup that silently skipped data would be found out only on the day it is
// needed.
func backupDataFiles(dataDir string) ([]string, error) {
	st, err := os.Stat(dataDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("data dir %s does not exist", dataDir)
		}
		return nil, err
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("data dir %s is not a directory", dataDir)
	}
	known := map[string]bool{backupMemoryLog: true}
	ignored := map[string]bool{"memory": true}
	for _, db := range backupDatabases {
		known[db] = true
		for _, suffix := range []string{"-wal", "-shm", "-journal"} {
			ignored[db+suffix] = true
		}
	}
	for _, p := range backupIgnored {
		ignored[p] = true
	}
	present := map[string]bool{}
	var unknown []string
	err = filepath.WalkDir(dataDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dataDir, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		switch {
		case known[rel] && d.Type().IsRegular():
			present[rel] = true
		case ignored[rel]:
		default:
			unknown = append(unknown, rel)
			if d.IsDir() {
				return fs.SkipDir
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(unknown) > 0 {
		return nil, fmt.Errorf("data dir %s holds files loom backup does not know: %s; move them out, or back them up separately", dataDir, joinNames(unknown))
	}
	var files []string
	for _, p := range append(slices.Clone(backupDatabases), backupMemoryLog) {
		if present[p] {
			files = append(files, p)
		}
	}
	return files, nil
}

// vacuumInto writes a consistent copy of the SQLite database src to the new file dst with VACUUM INTO, which
// reads src in one transaction (a WAL reader: it neither blocks the server's writes nor sees half of one), then
// checks the copy's integrity. src is opened read-only and never created.
func vacuumInto(ctx context.Context, src, dst string) error {
	db, err := sql.Open("sqlite", sqliteFileURI(src)+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", dst); err != nil {
		return fmt.Errorf("vacuum into %s: %w", dst, err)
	}
	if err := db.Close(); err != nil {
		return err
	}
	cp, err := sql.Open("sqlite", sqliteFileURI(dst)+"?mode=ro")
	if err != nil {
		return err
	}
	defer cp.Close()
	var res string
	if err := cp.QueryRowContext(ctx, "PRAGMA integrity_check").Scan(&res); err != nil {
		return fmt.Errorf("integrity check of the copy: %w", err)
	}
	if res != "ok" {
		return fmt.Errorf("integrity check of the copy: %s", res)
	}
	if err := cp.Close(); err != nil {
		return err
	}
	return fsyncFile(dst)
}

// sqliteFileURI is a file: URI for path, escaped so that '?', '#' and '%' in it stay part of the name.
func sqliteFileURI(path string) string {
	return "file:" + strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(filepath.ToSlash(path))
}

// copyMemoryLog copies a consistent prefix of the vector store's log in storeDir to the new file dst.
func copyMemoryLog(storeDir, dst string) (localstore.LogCopy, error) {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return localstore.LogCopy{}, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	c, err := localstore.CopyLog(storeDir, w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = f.Close()
	}
	return c, err
}

// restore verifies the backup in from and restores it into dataDir, which must be new or empty. Nothing is
// written before the whole backup has been verified, and dataDir appears only complete, by a rename.
func restore(ctx context.Context, from, dataDir string, out, stderr io.Writer) (err error) {
	start := time.Now()
	if from, err = filepath.Abs(from); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if dataDir, err = filepath.Abs(dataDir); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if real, err := filepath.EvalSymlinks(dataDir); err == nil {
		dataDir = real // a symlinked data dir: restore where it points
	}
	mode := fs.FileMode(0o750)
	if st, err := os.Stat(dataDir); err == nil {
		if !st.IsDir() {
			return fmt.Errorf("restore: data dir %s is not a directory; nothing was changed", dataDir)
		}
		mode = st.Mode().Perm()
	}
	if names, err := dirNames(dataDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("restore: %w", err)
	} else if len(names) > 0 {
		return fmt.Errorf("restore: data dir %s is not empty (holds %s): restore only into a new or empty directory; stop loom serve and move the old data dir aside first; nothing was changed", dataDir, joinNames(names))
	}
	m, err := verifyBackup(ctx, from)
	if err != nil {
		return fmt.Errorf("restore: %w; nothing was changed", err)
	}
	if m.LoomVersion != buildVersion() {
		fmt.Fprintf(stderr, "loom restore: note: the backup was made by loom %s, this is loom %s (databases migrate forward when loom serve starts)\n", m.LoomVersion, buildVersion())
	}

	parent := filepath.Dir(dataDir)
	if err := os.MkdirAll(parent, 0o750); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dataDir)+".restore-")
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	var total int64
	for _, f := range m.Files {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("restore: %w; nothing was changed", err)
		}
		dst := filepath.Join(tmp, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		if err := copyVerifiedFile(filepath.Join(from, filepath.FromSlash(f.Path)), dst, f); err != nil {
			return fmt.Errorf("restore: %w; nothing was changed", err)
		}
		total += f.Size
	}
	for _, dir := range []string{filepath.Join(tmp, "memory"), tmp} {
		if err := fsyncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("restore: %w", err)
		}
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := os.Rename(tmp, dataDir); err != nil {
		// Where rename cannot replace an empty directory, remove it first; a directory that is no longer
		// empty stays, and so the error stands.
		if os.Remove(dataDir) != nil || os.Rename(tmp, dataDir) != nil {
			return fmt.Errorf("restore: move into place: %w (was %s written to meanwhile?); nothing was changed", err, dataDir)
		}
	}
	if err := fsyncDir(parent); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	fmt.Fprintf(out, "restored %d files, %s, from %s into %s in %v: the state of %s as of %s (loom %s)\n",
		len(m.Files), humanBytes(total), from, dataDir, time.Since(start).Round(time.Millisecond), m.DataDir, m.StartTime.Format(time.RFC3339), m.LoomVersion)
	return nil
}

// verifyBackup reads the manifest of the backup in dir and checks that dir holds exactly the files it lists,
// each with its size and SHA-256. It reports every problem found, not only the first.
func verifyBackup(ctx context.Context, dir string) (backupManifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, backupManifestName))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat(dir); serr != nil {
			return backupManifest{}, fmt.Errorf("backup %s: %w", dir, serr)
		}
		return backupManifest{}, fmt.Errorf("backup %s has no %s: it is incomplete (the backup did not finish) or not a loom backup", dir, backupManifestName)
	}
	if err != nil {
		return backupManifest{}, fmt.Errorf("backup %s: %w", dir, err)
	}
	var m backupManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return backupManifest{}, fmt.Errorf("backup %s: %s is damaged: %w", dir, backupManifestName, err)
	}
	if m.Format != backupFormat {
		return backupManifest{}, fmt.Errorf("backup %s: format %d, this loom reads format %d", dir, m.Format, backupFormat)
	}
	allowed := append(slices.Clone(backupDatabases), backupMemoryLog)
	var problems []string
	listed := map[string]backupFileEntry{}
	for _, f := range m.Files {
		switch {
		case !slices.Contains(allowed, f.Path):
			problems = append(problems, fmt.Sprintf("%s: the manifest lists a file loom does not restore", f.Path))
		case listed[f.Path].Path != "":
			problems = append(problems, fmt.Sprintf("%s: listed twice in the manifest", f.Path))
		default:
			listed[f.Path] = f
		}
	}
	if len(m.Files) == 0 {
		problems = append(problems, "the manifest lists no files")
	}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." || rel == backupManifestName {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			for p := range listed {
				if strings.HasPrefix(p, rel+"/") {
					return nil
				}
			}
		}
		if _, ok := listed[rel]; !ok || !d.Type().IsRegular() {
			problems = append(problems, fmt.Sprintf("%s: not in the manifest", rel))
			if d.IsDir() {
				return fs.SkipDir
			}
		}
		return nil
	})
	if err != nil {
		return backupManifest{}, fmt.Errorf("backup %s: %w", dir, err)
	}
	for _, f := range m.Files {
		if listed[f.Path] != f {
			continue
		}
		if err := ctx.Err(); err != nil {
			return backupManifest{}, err
		}
		got, err := hashBackupFile(filepath.Join(dir, filepath.FromSlash(f.Path)), f.Path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			problems = append(problems, fmt.Sprintf("%s: missing", f.Path))
		case err != nil:
			problems = append(problems, err.Error())
		case got.Size != f.Size:
			problems = append(problems, fmt.Sprintf("%s: %d bytes, the manifest says %d (truncated?)", f.Path, got.Size, f.Size))
		case got.SHA256 != f.SHA256:
			problems = append(problems, fmt.Sprintf("%s: SHA-256 %s, the manifest says %s (corrupt)", f.Path, got.SHA256, f.SHA256))
		}
	}
	if len(problems) > 0 {
		slices.Sort(problems)
		return backupManifest{}, fmt.Errorf("backup %s is damaged: %s", dir, strings.Join(problems, "; "))
	}
	return m, nil
}

// copyVerifiedFile copies src to the new file dst, checks the bytes copied against want and fsyncs dst: the backup
// is checked again as it is read, in case it changed after verifyBackup.
func copyVerifiedFile(src, dst string, want backupFileEntry) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	defer out.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if err != nil {
		return fmt.Errorf("copy %s: %w", want.Path, err)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); n != want.Size || sum != want.SHA256 {
		return fmt.Errorf("%s changed while it was restored (%d bytes, SHA-256 %s)", want.Path, n, sum)
	}
	if err := out.Sync(); err != nil {
		return err
	}
	return out.Close()
}

// hashBackupFile returns path's size and SHA-256 as a manifest entry named rel.
func hashBackupFile(path, rel string) (backupFileEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return backupFileEntry{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return backupFileEntry{}, fmt.Errorf("read %s: %w", rel, err)
	}
	return backupFileEntry{Path: rel, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func writeFileDurably(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

func fsyncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

func fsyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// dirNames lists the names in dir; a missing dir is an error wrapping fs.ErrNotExist.
func dirNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	return names, nil
}

// joinNames joins names for an error message, at most ten of them.
func joinNames(names []string) string {
	if len(names) > 10 {
		return strings.Join(names[:10], ", ") + fmt.Sprintf(" and %d more", len(names)-10)
	}
	return strings.Join(names, ", ")
}

// humanBytes formats n bytes for people.
func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
