package e2e

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// pgCluster is a private PostgreSQL cluster: its own data directory, port and socket directory, so the suite
// never touches the machine's shared cluster (which other packages' tests use in parallel). Stop it with stop.
type pgCluster struct {
	bin     string // directory of initdb, pg_ctl, psql
	dir     string // owned by the cluster's OS user
	data    string
	sock    string
	port    int
	user    string // database superuser, from compose's URL
	pass    string
	db      string
	cred    *syscall.Credential // the OS user postgres runs as; nil: the test's own user
	logFile string
}

// pgBinDir finds the PostgreSQL server binaries, preferring version 15 (what .ci/postgres.sh installs).
func pgBinDir() (string, error) {
	if _, err := os.Stat("/usr/lib/postgresql/15/bin/initdb"); err == nil {
		return "/usr/lib/postgresql/15/bin", nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Strings(dirs)
	if len(dirs) == 0 {
		if p, err := exec.LookPath("initdb"); err == nil {
			return filepath.Dir(p), nil
		}
		return "", fmt.Errorf("no initdb under /usr/lib/postgresql/*/bin or on PATH (install postgresql-15: .ci/postgres.sh)")
	}
	return filepath.Dir(dirs[len(dirs)-1]), nil
}

// startPostgres creates and starts a private cluster whose superuser, password and database are those of
// composeURL (compose's LOOM_DATABASE_URL), with pgvector installed in the database.
func startPostgres(t *testing.T, composeURL string) *pgCluster {
	t.Helper()
	bin, err := pgBinDir()
	if err != nil {
		prerequisite(t, err.Error())
	}
	share, err := exec.Command(filepath.Join(bin, "pg_config"), "--sharedir").Output()
	if err == nil {
		if _, err = os.Stat(filepath.Join(strings.TrimSpace(string(share)), "extension", "vector.control")); err != nil {
			prerequisite(t, "pgvector is not installed (vector.control missing); .ci/postgres.sh builds it")
		}
	}
	u, err := url.Parse(composeURL)
	if err != nil {
		t.Fatalf("compose LOOM_DATABASE_URL: %v", err)
	}
	pass, _ := u.User.Password()
	c := &pgCluster{bin: bin, user: u.User.Username(), pass: pass, db: strings.TrimPrefix(u.Path, "/"), port: freePort(t)}
	// Not t.TempDir: its parents are private to root, and the cluster runs as the postgres user.
	c.dir, err = os.MkdirTemp("", "loom-e2e-pg-")
	if err != nil {
		t.Fatal(err)
	}
	c.data, c.sock, c.logFile = filepath.Join(c.dir, "data"), filepath.Join(c.dir, "sock"), filepath.Join(c.dir, "postgres.log")
	if err := os.Mkdir(c.sock, 0o700); err != nil {
		t.Fatal(err)
	}
	pwfile := filepath.Join(c.dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(c.pass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 { // initdb refuses to run as root
		pu, err := user.Lookup("postgres")
		if err != nil {
			prerequisite(t, "running as root and there is no postgres OS user to run the cluster as")
		}
		uid, _ := strconv.Atoi(pu.Uid)
		gid, _ := strconv.Atoi(pu.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		for _, p := range []string{c.dir, c.sock, pwfile} {
			if err := os.Chown(p, uid, gid); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() {
		_ = c.ctl("stop", "-m", "immediate")
		if !t.Failed() {
			os.RemoveAll(c.dir)
		} else {
			t.Logf("postgres cluster kept in %s", c.dir)
		}
	})
	if out, err := c.run("initdb", "-D", c.data, "-U", c.user, "--pwfile", pwfile, "-E", "UTF8", "--no-sync",
		"--auth-local=trust", "--auth-host=scram-sha-256"); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	// The port was free a moment ago; another test may take it first, so try a few.
	for attempt := 1; ; attempt++ {
		err := c.ctl("start")
		if err == nil {
			break
		}
		if attempt == 3 {
			t.Fatal(err)
		}
		c.port = freePort(t)
	}
	if out, err := c.psql("postgres", "CREATE DATABASE "+quoteIdent(c.db)); err != nil {
		t.Fatalf("create database: %v\n%s", err, out)
	}
	if out, err := c.psql(c.db, "CREATE EXTENSION vector"); err != nil {
		t.Fatalf("create extension vector: %v\n%s", err, out)
	}
	return c
}

// url is the address services use: TCP on loopback with the password, like compose's URL with another host.
func (c *pgCluster) url(composeURL string) string {
	u, _ := url.Parse(composeURL)
	u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port))
	return u.String()
}

// run runs one of the cluster's binaries as the cluster's OS user.
func (c *pgCluster) run(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Dir = c.dir
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C", "PGHOST=" + c.sock, "PGPORT=" + strconv.Itoa(c.port), "PGUSER=" + c.user}
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd.CombinedOutput()
}

// ctl runs pg_ctl: start, stop, restart. It waits for the operation to finish.
func (c *pgCluster) ctl(op string, args ...string) error {
	all := append([]string{op, "-w", "-t", "60", "-D", c.data, "-l", c.logFile}, args...)
	if op == "start" || op == "restart" {
		all = append(all, "-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300", c.port, c.sock))
	}
	if out, err := c.run("pg_ctl", all...); err != nil {
		log, _ := os.ReadFile(c.logFile)
		return fmt.Errorf("pg_ctl %s: %v\n%s\n%s", op, err, out, tail(string(log), 2000))
	}
	return nil
}

// psql runs one statement in db over the unix socket.
func (c *pgCluster) psql(db, sql string) ([]byte, error) {
	return c.run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-tAc", sql)
}

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
