package batchlayer

// The lease lets any number of `lambda batch` processes run with at most one scheduling each
// dataset. ClickHouse has no compare-and-set, so it lives in ZooKeeper (or ClickHouse Keeper):
// an ephemeral node <batch.lease.path>/<database>/<dataset> whose owner is the holder's session. The node
// goes when the session ends: at once on a clean stop, batch.lease.session_timeout after a
// holder was killed or cut off. Waiting processes watch the node and try to create it when it
// goes.
//
// A holder treats the lease as lost as soon as its session is not connected (it cannot know
// whether it has expired), and checks it with a round trip to ZooKeeper (the node's owner is
// its session) just before every swap; a run whose check fails is recorded failed and swaps
// nothing. What remains is the time between that check and the ALTER, milliseconds, against a
// session timeout of seconds before anyone else can hold the lease.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lambda-platform/lambda/shared/config"
)

// errLeaseLost fails a run whose lease was lost before its swap.
var errLeaseLost = errors.New("the batch lease is not held")

type lease struct {
	cfg  config.Lease
	dir  string // <path>/<database>
	conn *zk.Conn
	id   string // what the holder writes into the node: host, pid
	log  *slog.Logger
	mu   sync.Mutex
	held map[string]int64 // dataset → the session that took its lease (0: not held)
}

// zkLogger routes the client's messages to slog at debug level (it reconnects noisily).
type zkLogger struct{ log *slog.Logger }

func (z zkLogger) Printf(format string, args ...any) {
	z.log.Debug("zookeeper: " + strings.TrimSpace(fmt.Sprintf(format, args...)))
}

// openLease connects to ZooKeeper; the session is established in the background.
func openLease(cfg config.Lease, database string, log *slog.Logger) (*lease, error) {
	conn, _, err := zk.Connect(cfg.ZooKeeper, cfg.SessionTimeout.D(), zk.WithLogger(zkLogger{log}))
	if err != nil {
		return nil, fmt.Errorf("cannot connect to zookeeper %v: %w", cfg.ZooKeeper, err)
	}
	host, _ := os.Hostname()
	return &lease{cfg: cfg, dir: strings.TrimRight(cfg.Path, "/") + "/" + database, conn: conn, id: fmt.Sprintf("%s pid %d", host, os.Getpid()), log: log, held: map[string]int64{}}, nil
}

// close ends the session: the nodes it holds go at once.
func (le *lease) close() { le.conn.Close() }

func (le *lease) node(ds string) string { return le.dir + "/" + ds }

// Held reports whether the lease of ds was taken by the current session and the session is
// connected. (After an expiry the client opens a new session, which holds nothing.)
func (le *lease) Held(ds string) bool {
	le.mu.Lock()
	defer le.mu.Unlock()
	return le.held[ds] != 0 && le.held[ds] == le.conn.SessionID() && le.conn.State() == zk.StateHasSession
}

func (le *lease) setHeld(ds string, v bool) {
	le.mu.Lock()
	defer le.mu.Unlock()
	le.held[ds] = 0
	if v {
		le.held[ds] = le.conn.SessionID()
	}
}

// check confirms with a round trip to ZooKeeper that this session owns the lease of ds.
func (le *lease) check(ctx context.Context, ds string) error {
	if le.conn.State() != zk.StateHasSession {
		le.setHeld(ds, false)
		return fmt.Errorf("%w: zookeeper session not connected (%s)", errLeaseLost, le.conn.State())
	}
	type res struct {
		st  *zk.Stat
		err error
	}
	ch := make(chan res, 1)
	go func() {
		_, st, err := le.conn.Get(le.node(ds))
		ch <- res{st, err}
	}()
	ctx, cancel := context.WithTimeout(ctx, le.cfg.SessionTimeout.D()/2)
	defer cancel()
	select {
	case <-ctx.Done():
		le.setHeld(ds, false)
		return fmt.Errorf("%w: no answer from zookeeper: %w", errLeaseLost, ctx.Err())
	case r := <-ch:
		if r.err != nil {
			le.setHeld(ds, false)
			return fmt.Errorf("%w: cannot read %s: %w", errLeaseLost, le.node(ds), r.err)
		}
		if r.st.EphemeralOwner != le.conn.SessionID() {
			le.setHeld(ds, false)
			return fmt.Errorf("%w: %s belongs to another session", errLeaseLost, le.node(ds))
		}
	}
	return nil
}

// holder returns what the current holder of ds wrote, "" when nobody holds it.
func (le *lease) holder(ds string) string {
	b, _, err := le.conn.Get(le.node(ds))
	if err != nil {
		return ""
	}
	return string(b)
}

// tryAcquire creates the lease node of ds; it reports false (and no error) when another
// session holds it.
func (le *lease) tryAcquire(ds string) (bool, error) {
	if err := le.ensurePath(); err != nil {
		return false, err
	}
	_, err := le.conn.Create(le.node(ds), []byte(le.id), zk.FlagEphemeral, zk.WorldACL(zk.PermAll))
	switch {
	case err == nil:
		le.setHeld(ds, true)
		return true, nil
	case errors.Is(err, zk.ErrNodeExists):
		// Ours from a previous connection of this session? Then it is still ours.
		if _, st, gerr := le.conn.Get(le.node(ds)); gerr == nil && st.EphemeralOwner == le.conn.SessionID() {
			le.setHeld(ds, true)
			return true, nil
		}
		return false, nil
	default:
		return false, fmt.Errorf("cannot create lease %s: %w", le.node(ds), err)
	}
}

func (le *lease) ensurePath() error {
	p := ""
	for _, part := range strings.Split(strings.Trim(le.dir, "/"), "/") {
		p += "/" + part
		if _, err := le.conn.Create(p, nil, 0, zk.WorldACL(zk.PermAll)); err != nil && !errors.Is(err, zk.ErrNodeExists) {
			return fmt.Errorf("cannot create %s: %w", p, err)
		}
	}
	return nil
}

// campaign holds the lease of ds whenever it can until ctx is done: it tries to take the node,
// waits for it to go when another session holds it, and calls acquired each time it took it.
// It returns when ctx is done; close ends the session and so releases the lease.
func (le *lease) campaign(ctx context.Context, ds string, acquired func()) {
	const retry = time.Second
	was, first := false, true
	for ctx.Err() == nil {
		ok, err := le.tryAcquire(ds)
		if err != nil {
			le.log.Warn("cannot take the batch lease", "dataset", ds, "err", err)
			sleepCtx(ctx, retry)
			continue
		}
		switch {
		case ok && !was:
			le.log.Info("batch lease taken: this process schedules the dataset", "dataset", ds, "node", le.node(ds))
			acquired()
		case !ok && was:
			le.log.Warn("batch lease lost: standing by", "dataset", ds, "holder", le.holder(ds))
		case !ok && first:
			le.log.Info("batch lease held by another process: standing by", "dataset", ds, "holder", le.holder(ds))
		}
		was, first = ok, false
		// Wait for a change of the node (deleted: try to take it) or of the session (an expiry
		// ends every watch); look again after a session timeout in any case.
		exists, _, ev, err := le.conn.ExistsW(le.node(ds))
		if err != nil {
			sleepCtx(ctx, retry)
			continue
		}
		if !exists {
			continue
		}
		select {
		case <-ctx.Done():
		case <-ev:
		case <-time.After(le.cfg.SessionTimeout.D()):
		}
	}
	le.setHeld(ds, false)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
