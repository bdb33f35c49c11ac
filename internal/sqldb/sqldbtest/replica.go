package sqldbtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvPGBinDir names the environment variable that may point at the PostgreSQL server binaries (postgres,
// pg_basebackup) matching the test server; by default they are looked for in /usr/lib/postgresql/<major>/bin.
const EnvPGBinDir = "LOOM_TEST_PG_BINDIR"

// Replica is a streaming replica (hot standby) of the test server, the cluster behind LOOM_TEST_DATABASE_URL,
// running on this machine: every database of that server, replayed as it changes. Get it with [SharedReplica].
//
// It is made with pg_basebackup, which copies the whole cluster (about 100 MB and 2-4 s here; the server takes a
// fast checkpoint for it), so a test binary makes at most one: packages that use it call [Main] from TestMain
// to stop it and remove its files at the end. It streams through a physical replication slot named
// loom_test_replica_<pid>, so the primary keeps the WAL it has not received yet while it is stopped (the test
// server checkpoints whenever a test creates or drops a database, and would otherwise recycle that WAL at once);
// Main drops the slot, and the next test binary drops the inactive slots of test binaries that are gone. Its methods must not be called concurrently with each other;
// tests that stop it or pause its replay must not run in parallel with tests that use it.
type Replica struct {
	// Port is the port it listens on, on 127.0.0.1.
	Port int

	base *url.URL // LOOM_TEST_DATABASE_URL
	slot string   // the replication slot on the primary
	dir  string   // owned by the server's OS user: data/, the unix socket, postgres.log
	bin  string
	cred *syscall.Credential // the OS user the server runs as; nil to run as this process's user

	mu     sync.Mutex
	proc   *os.Process
	exited chan struct{}
}

var shared struct {
	once sync.Once
	r    *Replica
	err  error
}

// SharedReplica returns the test binary's replica, making and starting it on first use. Without
// LOOM_TEST_DATABASE_URL it skips the test, except in CI (CI=true), where it fails it; so does any failure to
// make the replica (for example a server whose pg_hba.conf refuses replication connections from 127.0.0.1: this
// helper never edits the server's configuration).
func SharedReplica(t testing.TB) *Replica {
	t.Helper()
	base := os.Getenv(EnvURL)
	if base == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not set: Postgres tests must run in CI (see .ci/postgres.sh)", EnvURL)
		}
		t.Skipf("%s is not set; run .ci/postgres.sh to enable Postgres tests", EnvURL)
	}
	shared.once.Do(func() {
		start := time.Now()
		shared.r, shared.err = newReplica(base)
		if shared.err == nil {
			t.Logf("read replica: made and started on port %d in %v (pg_basebackup copies the whole test cluster)", shared.r.Port, time.Since(start).Round(time.Millisecond))
		}
	})
	if shared.err != nil {
		t.Fatalf("read replica: %v", shared.err)
	}
	return shared.r
}

// Main runs a package's tests, then stops the replica [SharedReplica] started and removes its files. Call it
// from TestMain: func TestMain(m *testing.M) { sqldbtest.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	if r := shared.r; r != nil {
		r.kill()
		_ = os.RemoveAll(r.dir)
		if err := r.dropSlot(); err != nil {
			fmt.Fprintf(os.Stderr, "read replica: %v\n", err)
		}
	}
	os.Exit(code)
}

// slotPrefix starts the names of the test replicas' replication slots; the test binary's pid follows.
const slotPrefix = "loom_test_replica_"

// dropSlot drops the replica's slot, once the primary has noticed that the stopped replica is gone.
func (r *Replica) dropSlot() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.base.String())
	if err != nil {
		return fmt.Errorf("drop slot %s: %w", r.slot, err)
	}
	defer conn.Close(ctx)
	for {
		var found, active bool
		err := conn.QueryRow(ctx, "SELECT true, active FROM pg_replication_slots WHERE slot_name = $1", r.slot).Scan(&found, &active)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err == nil && !active {
			_, err = conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", r.slot)
			if err == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("drop slot %s: %v (%w)", r.slot, err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// dropStaleSlots drops the inactive slots of test binaries that are gone (killed before Main could drop them),
// which would otherwise keep WAL on the test server for ever.
func dropStaleSlots(ctx context.Context, conn *pgx.Conn) error {
	rows, err := conn.Query(ctx, "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'physical' AND NOT active AND starts_with(slot_name, $1)", slotPrefix)
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, name := range names {
		pid, err := strconv.Atoi(strings.TrimPrefix(name, slotPrefix))
		if err != nil || pid <= 0 || !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			continue
		}
		if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot($1)", name); err != nil {
			return fmt.Errorf("drop stale slot %s: %w", name, err)
		}
	}
	return nil
}

// ownerFile, in a replica's directory, holds the pid of the test binary that made it: a directory whose test
// binary is gone is removed by the next one (its server died with that binary, see start).
const ownerFile = "owner.pid"

func newReplica(base string) (*Replica, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", EnvURL, err)
	}
	r := &Replica{base: u, slot: slotPrefix + strconv.Itoa(os.Getpid())}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", EnvURL, err)
	}
	defer conn.Close(ctx)
	// A hot standby needs these at least as high as on the primary.
	var canReplicate bool
	var version string
	var limits [5]string
	err = conn.QueryRow(ctx, `SELECT (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
		current_setting('server_version_num'), current_setting('max_connections'), current_setting('max_worker_processes'),
		current_setting('max_wal_senders'), current_setting('max_prepared_transactions'), current_setting('max_locks_per_transaction')`).
		Scan(&canReplicate, &version, &limits[0], &limits[1], &limits[2], &limits[3], &limits[4])
	if err != nil {
		return nil, fmt.Errorf("read server settings: %w", err)
	}
	if !canReplicate {
		return nil, fmt.Errorf("role %q has neither REPLICATION nor SUPERUSER: pg_basebackup needs one", u.User.Username())
	}
	major, _ := strconv.Atoi(version)
	r.bin = os.Getenv(EnvPGBinDir)
	if r.bin == "" {
		r.bin = fmt.Sprintf("/usr/lib/postgresql/%d/bin", major/10000)
	}
	for _, name := range []string{"postgres", "pg_basebackup"} {
		if _, err := os.Stat(filepath.Join(r.bin, name)); err != nil {
			return nil, fmt.Errorf("%s: %w (set %s to the server's binaries)", name, err, EnvPGBinDir)
		}
	}
	if os.Geteuid() == 0 {
		// PostgreSQL refuses to run as root.
		pu, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root, the replica needs the postgres OS user: %w", err)
		}
		uid, _ := strconv.Atoi(pu.Uid)
		gid, _ := strconv.Atoi(pu.Gid)
		r.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	removeStale()
	if err := dropStaleSlots(ctx, conn); err != nil {
		return nil, err
	}
	if r.dir, err = os.MkdirTemp("", "loom-replica-"); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(r.dir)
		}
	}()
	if err := os.WriteFile(filepath.Join(r.dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	if err := r.chown(r.dir); err != nil {
		return nil, err
	}

	// pg_basebackup: -R writes standby.signal, primary_conninfo (with the password) and primary_slot_name, -C -S
	// creates the slot, -X stream brings the WAL written during the copy, -c fast asks for an immediate checkpoint
	// instead of waiting for a spread one, -N skips fsync (a test replica need not survive a power cut).
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "5432"
	}
	data := filepath.Join(r.dir, "data")
	bb := exec.CommandContext(ctx, filepath.Join(r.bin, "pg_basebackup"), "-D", data, "-R", "-C", "-S", r.slot, "-X", "stream", "-c", "fast", "-N",
		"-h", host, "-p", port, "-U", u.User.Username(), "-w")
	pass, _ := u.User.Password()
	bb.Env = append(os.Environ(), "PGPASSWORD="+pass, "PGSSLMODE="+cmpOr(u.Query().Get("sslmode"), "prefer"))
	bb.SysProcAttr = &syscall.SysProcAttr{Credential: r.cred}
	defer func() {
		if !ok {
			r.kill()
			_ = r.dropSlot() // pg_basebackup may have made it before failing
		}
	}()
	if out, err := bb.CombinedOutput(); err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "pg_hba.conf") {
			msg += fmt.Sprintf("\nthe server's pg_hba.conf must allow replication connections from %s for %q (Debian's default has "+
				"`host replication all 127.0.0.1/32 scram-sha-256`); this helper does not edit it", host, u.User.Username())
		}
		return nil, fmt.Errorf("pg_basebackup: %w: %s", err, msg)
	}
	// Debian keeps postgresql.conf and pg_hba.conf outside the data directory, so the copy has neither.
	conf := fmt.Sprintf(`listen_addresses = '127.0.0.1'
port = %%d
unix_socket_directories = '%s'
hot_standby = on
fsync = off
shared_buffers = 32MB
max_connections = %s
max_worker_processes = %s
max_wal_senders = %s
max_prepared_transactions = %s
max_locks_per_transaction = %s
`, r.dir, limits[0], limits[1], limits[2], limits[3], limits[4])
	if r.Port, err = freePort(); err != nil {
		return nil, err
	}
	files := map[string]string{
		"postgresql.conf": fmt.Sprintf(conf, r.Port),
		"pg_hba.conf":     "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
		"pg_ident.conf":   "",
	}
	for name, text := range files {
		p := filepath.Join(data, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			return nil, err
		}
		if err := r.chown(p); err != nil {
			return nil, err
		}
	}
	if err := r.start(ctx); err != nil {
		return nil, err
	}
	ok = true
	return r, nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (r *Replica) chown(path string) error {
	if r.cred == nil {
		return nil
	}
	return os.Chown(path, int(r.cred.Uid), int(r.cred.Gid))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// removeStale removes the replica directories of test binaries that are gone.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "loom-replica-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// start runs the server and waits until it accepts connections as a standby. The server gets SIGKILL if the
// thread that started it ends, so a test binary that dies leaves no server behind: the thread is locked to a
// goroutine that lives as long as the server.
func (r *Replica) start(ctx context.Context) error {
	logFile, err := os.OpenFile(filepath.Join(r.dir, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(filepath.Join(r.bin, "postgres"), "-D", filepath.Join(r.dir, "data"))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.cred, Pdeathsig: syscall.SIGKILL, Setpgid: true}
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine, after the server
		defer logFile.Close()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start replica: %w", err)
	}
	r.mu.Lock()
	r.proc, r.exited = cmd.Process, exited
	r.mu.Unlock()
	deadline := time.Now().Add(time.Minute)
	for {
		err := r.ready(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("start replica: the server exited:\n%s", r.logTail())
		default:
		}
		if time.Now().After(deadline) {
			r.kill()
			return fmt.Errorf("start replica: not ready after a minute: %v\n%s", err, r.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *Replica) ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.url(r.base))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var standby bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil {
		return err
	}
	if !standby {
		return errors.New("the server is not in recovery")
	}
	return nil
}

func (r *Replica) logTail() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "postgres.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(bytes.TrimSpace(b))
}

// kill stops the server at once, like pg_ctl stop -m immediate (SIGQUIT; the next start replays from the last
// restart point), and waits for it to exit.
func (r *Replica) kill() {
	r.mu.Lock()
	proc, exited := r.proc, r.exited
	r.proc = nil
	r.mu.Unlock()
	if proc == nil {
		return
	}
	_ = proc.Signal(syscall.SIGQUIT)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		_ = proc.Kill()
		<-exited
	}
}

func (r *Replica) url(primary *url.URL) string {
	u := *primary
	u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.Port))
	return u.String()
}

// URL returns the URL of primaryURL's database (made by [PostgresURL]) on the replica, once the replica has
// caught up with the primary, so the database and everything committed in it before the call are there.
func (r *Replica) URL(t testing.TB, primaryURL string) string {
	t.Helper()
	u, err := url.Parse(primaryURL)
	if err != nil {
		t.Fatalf("parse %s: %v", primaryURL, err)
	}
	r.WaitCaughtUp(t)
	return r.url(u)
}

// WaitCaughtUp waits until the replica has replayed everything the primary had flushed when it was called.
func (r *Replica) WaitCaughtUp(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	primary, err := pgx.Connect(ctx, r.base.String())
	if err != nil {
		t.Fatalf("connect primary: %v", err)
	}
	defer primary.Close(ctx)
	var target int64
	if err := primary.QueryRow(ctx, "SELECT (pg_current_wal_flush_lsn() - '0/0')::int8").Scan(&target); err != nil {
		t.Fatalf("read primary position: %v", err)
	}
	conn, err := pgx.Connect(ctx, r.url(r.base))
	if err != nil {
		t.Fatalf("connect replica: %v", err)
	}
	defer conn.Close(ctx)
	for {
		var replay int64
		if err := conn.QueryRow(ctx, "SELECT (pg_last_wal_replay_lsn() - '0/0')::int8").Scan(&replay); err != nil {
			t.Fatalf("read replica position: %v", err)
		}
		if replay >= target {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("replica still at %d, primary at %d: %v", replay, target, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Stop stops the replica at once (an immediate shutdown, as if it crashed). Start brings it back.
func (r *Replica) Stop(t testing.TB) {
	t.Helper()
	r.kill()
}

// Start starts a stopped replica on the same port and waits until it accepts connections.
func (r *Replica) Start(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	running := r.proc != nil
	r.mu.Unlock()
	if running {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := r.start(ctx); err != nil {
		t.Fatal(err)
	}
}

// PauseReplay pauses WAL replay on the replica (pg_wal_replay_pause): it keeps receiving WAL and answering
// queries, and falls behind. ResumeReplay resumes it; a test that pauses should resume in t.Cleanup.
func (r *Replica) PauseReplay(t testing.TB) { r.exec(t, "SELECT pg_wal_replay_pause()") }

// ResumeReplay resumes WAL replay on the replica.
func (r *Replica) ResumeReplay(t testing.TB) { r.exec(t, "SELECT pg_wal_replay_resume()") }

func (r *Replica) exec(t testing.TB, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, r.url(r.base))
	if err != nil {
		t.Fatalf("connect replica: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s on the replica: %v", sql, err)
	}
}
