package broker

import (
	"log/slog"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// sessionReaper expires the members of classic consumer groups that stopped talking to the
// broker, as Kafka does, where kfake does not.
//
// kfake (v0.0.0-20260918054303-01f206a7e32c, the newest) arms a classic-group member's
// session timer only when a JoinGroup or SyncGroup reply reaches the member: group.reply
// returns before updateHeartbeat when clientReq.reply fails on a closed connection, and a
// member parked in JoinGroup has no timer (addMemberAndRebalance stops it). A member whose
// process dies while its JoinGroup is parked (for instance SIGKILLed while the other members
// flush and release their partitions) is therefore never expired once the leader syncs:
// completeLeaderSync makes the group stable and stops the pending-sync timer, and the dead
// member keeps its assignment for good. Its partitions are consumed by nobody, and the
// survivors never hear of a rebalance. Kafka schedules every member's heartbeat expiration
// when a join completes, whether the response was delivered or not
// (GroupCoordinator.completeAndScheduleNextHeartbeatExpiration).
//
// The reaper watches the requests that keep a session alive (JoinGroup, SyncGroup, Heartbeat,
// OffsetCommit) and, in a stable group, sends a LeaveGroup on behalf of a member that has sent
// none for its session timeout since the group reached its generation. Other states are left
// to kfake: a preparing group completes at the rebalance timeout without the members that did
// not rejoin, and a completing one removes those that did not sync.
type sessionReaper struct {
	c    *kfake.Cluster
	addr string
	log  *slog.Logger
	now  func() time.Time

	mu     sync.Mutex
	groups map[string]*watchedGroup

	stop chan struct{}
	done chan struct{}
}

type watchedGroup struct {
	generation int32         // generation last seen stable, -1 before
	stableAt   time.Time     // when that generation was first seen stable
	timeout    time.Duration // largest session timeout of the group's joins
	members    map[string]*watchedMember
}

type watchedMember struct {
	seen    time.Time     // last request that keeps the session alive
	timeout time.Duration // session timeout from the member's JoinGroup, 0 when unknown
}

// reapEvery is how often stable groups are checked; a dead member is expired at most this
// much later than its session timeout.
const reapEvery = time.Second

func startSessionReaper(c *kfake.Cluster, addr string, log *slog.Logger) *sessionReaper {
	r := &sessionReaper{c: c, addr: addr, log: log, now: time.Now, groups: map[string]*watchedGroup{},
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, key := range []kmsg.Key{kmsg.JoinGroup, kmsg.SyncGroup, kmsg.Heartbeat, kmsg.OffsetCommit} {
		// Observe only: returning false lets kfake handle the request, and an unhandled
		// control function stays installed.
		c.ControlKey(int16(key), func(req kmsg.Request) (kmsg.Response, error, bool) {
			r.observe(req)
			return nil, nil, false
		})
	}
	go r.run()
	return r
}

func (r *sessionReaper) observe(req kmsg.Request) {
	var group, member string
	var timeout time.Duration
	switch req := req.(type) {
	case *kmsg.JoinGroupRequest:
		group, member, timeout = req.Group, req.MemberID, time.Duration(req.SessionTimeoutMillis)*time.Millisecond
	case *kmsg.SyncGroupRequest:
		group, member = req.Group, req.MemberID
	case *kmsg.HeartbeatRequest:
		group, member = req.Group, req.MemberID
	case *kmsg.OffsetCommitRequest:
		group, member = req.Group, req.MemberID
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.groups[group]
	if g == nil {
		if timeout == 0 {
			return // not a group this reaper saw joining
		}
		g = &watchedGroup{generation: -1, members: map[string]*watchedMember{}}
		r.groups[group] = g
	}
	// A first JoinGroup has no member id, and before JoinGroup v4 the member never sends one
	// until it is in the group: the largest timeout asked for stands in for such members'.
	g.timeout = max(g.timeout, timeout)
	if member == "" {
		return
	}
	m := g.members[member]
	if m == nil {
		m = &watchedMember{}
		g.members[member] = m
	}
	m.seen = r.now()
	if timeout > 0 {
		m.timeout = timeout
	}
}

func (r *sessionReaper) run() {
	defer close(r.done)
	t := time.NewTicker(reapEvery)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		for group, members := range r.expired() {
			r.leave(group, members)
		}
	}
}

// expired returns, per group, the members of stable groups whose session ran out.
func (r *sessionReaper) expired() map[string][]string {
	r.mu.Lock()
	names := make([]string, 0, len(r.groups))
	for name := range r.groups {
		names = append(names, name)
	}
	r.mu.Unlock()
	out := map[string][]string{}
	for _, name := range names {
		info := r.c.GroupInfo(name) // outside r.mu: it waits for kfake's loop, which runs observe
		now := r.now()
		r.mu.Lock()
		g := r.groups[name]
		switch {
		case info == nil || info.State == "Empty" || info.State == "Dead":
			delete(r.groups, name)
		case info.State != "Stable":
		case info.Epoch != g.generation:
			// A new generation: every member's session starts now, as Kafka's does when the
			// join completes.
			g.generation, g.stableAt = info.Epoch, now
			current := map[string]bool{}
			for _, m := range info.Members {
				current[m.MemberID] = true
			}
			for id := range g.members {
				if !current[id] {
					delete(g.members, id)
				}
			}
		default:
			for _, m := range info.Members {
				w := g.members[m.MemberID]
				if w == nil {
					w = &watchedMember{}
					g.members[m.MemberID] = w
				}
				timeout := w.timeout
				if timeout == 0 {
					timeout = g.timeout
				}
				if timeout <= 0 {
					continue
				}
				last := w.seen
				if g.stableAt.After(last) {
					last = g.stableAt
				}
				if now.Sub(last) > timeout {
					out[name] = append(out[name], m.MemberID)
					delete(g.members, m.MemberID)
				}
			}
		}
		r.mu.Unlock()
	}
	return out
}

// leave removes members from a group as their own LeaveGroup would: kfake rebalances the
// group and the survivors rejoin.
func (r *sessionReaper) leave(group string, members []string) {
	sc := sarama.NewConfig()
	b := sarama.NewBroker(r.addr)
	if err := b.Open(sc); err != nil {
		r.log.Warn("broker: cannot expire dead group members", "group", group, "members", members, "err", err)
		return
	}
	defer func() { _ = b.Close() }()
	for _, m := range members {
		resp, err := b.LeaveGroup(&sarama.LeaveGroupRequest{GroupId: group, MemberId: m})
		if err == nil && resp.Err != sarama.ErrNoError && resp.Err != sarama.ErrUnknownMemberId {
			err = resp.Err
		}
		if err != nil {
			r.log.Warn("broker: cannot expire a dead group member", "group", group, "member", m, "err", err)
			continue
		}
		r.log.Info("broker: expired a group member silent for its session timeout", "group", group, "member", m)
	}
}

func (r *sessionReaper) close() {
	close(r.stop)
	<-r.done
}
