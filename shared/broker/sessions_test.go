package broker

import (
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/lambda-platform/lambda/shared/nettest"
)

// TestDeadMemberParkedInJoinIsExpired is the group protocol of a consumer that dies while its
// JoinGroup waits for the others to rejoin: once the rebalance completes without it hearing
// the answer, the group must still expire it after its session timeout and rebalance, as
// Kafka does, instead of keeping its partitions assigned to nobody alive.
func TestDeadMemberParkedInJoinIsExpired(t *testing.T) {
	b, err := Start(Options{Listen: "127.0.0.1:0", Partitions: 2, Topics: []string{"t"}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	const group = "g"
	conn := func(addr string) *sarama.Broker {
		t.Helper()
		c := sarama.NewBroker(addr)
		if err := c.Open(sarama.NewConfig()); err != nil {
			t.Fatal(err)
		}
		return c
	}
	join := func(c *sarama.Broker, member string) (*sarama.JoinGroupResponse, error) {
		req := &sarama.JoinGroupRequest{Version: 1, GroupId: group, SessionTimeout: 6000, RebalanceTimeout: 30000,
			MemberId: member, ProtocolType: "consumer"}
		if err := req.AddGroupProtocolMetadata("range", &sarama.ConsumerGroupMemberMetadata{Topics: []string{"t"}}); err != nil {
			t.Fatal(err)
		}
		return c.JoinGroup(req)
	}
	sync := func(c *sarama.Broker, jr *sarama.JoinGroupResponse, assign map[string][]int32) {
		t.Helper()
		req := &sarama.SyncGroupRequest{GroupId: group, GenerationId: jr.GenerationId, MemberId: jr.MemberId}
		for m, parts := range assign {
			if err := req.AddGroupAssignmentMember(m, &sarama.ConsumerGroupMemberAssignment{Topics: map[string][]int32{"t": parts}}); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := c.SyncGroup(req)
		if err != nil || resp.Err != sarama.ErrNoError {
			t.Fatalf("sync: %v %v", err, resp)
		}
	}
	heartbeat := func(c *sarama.Broker, jr *sarama.JoinGroupResponse) sarama.KError {
		t.Helper()
		resp, err := c.Heartbeat(&sarama.HeartbeatRequest{GroupId: group, GenerationId: jr.GenerationId, MemberId: jr.MemberId})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Err
	}
	waitState := func(state string, members int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			info := b.c.GroupInfo(group)
			if info != nil && info.State == state && len(info.Members) == members {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("group never %s with %d members: %+v", state, members, info)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// A joins alone and owns both partitions.
	a := conn(b.Addr())
	defer a.Close()
	ja, err := join(a, "")
	if err != nil || ja.Err != sarama.ErrNoError {
		t.Fatalf("join: %v %v", err, ja)
	}
	sync(a, ja, map[string][]int32{ja.MemberId: {0, 1}})

	// B joins and waits for A to rejoin; it dies meanwhile (its connection, through a proxy,
	// is cut).
	px := nettest.NewProxy(t, b.Addr())
	bc := conn(px.Addr())
	defer bc.Close()
	go func() { _, _ = join(bc, "") }()
	waitState("PreparingRebalance", 2)
	px.Cut()
	time.Sleep(200 * time.Millisecond) // the broker reads EOF

	// A hears of the rebalance, rejoins and, as the leader, hands partition 1 to B.
	if err := heartbeat(a, ja); err != sarama.ErrRebalanceInProgress {
		t.Fatalf("heartbeat during the rebalance: %v, want %v", err, sarama.ErrRebalanceInProgress)
	}
	ja, err = join(a, ja.MemberId)
	if err != nil || ja.Err != sarama.ErrNoError {
		t.Fatalf("rejoin: %v %v", err, ja)
	}
	members, err := ja.GetMembers()
	if err != nil || len(members) != 2 {
		t.Fatalf("rejoin: members %v, %v; want A and B", members, err)
	}
	assign := map[string][]int32{}
	for m := range members {
		if m == ja.MemberId {
			assign[m] = []int32{0}
		} else {
			assign[m] = []int32{1}
		}
	}
	sync(a, ja, assign)

	// B never heartbeats: after its session timeout the group rebalances and A gets B's
	// partition back.
	deadline := time.Now().Add(time.Minute)
	for heartbeat(a, ja) == sarama.ErrNoError {
		if time.Now().After(deadline) {
			t.Fatalf("the dead member still holds its partition a minute later: %+v", b.c.GroupInfo(group))
		}
		time.Sleep(500 * time.Millisecond)
	}
	ja, err = join(a, ja.MemberId)
	if err != nil || ja.Err != sarama.ErrNoError {
		t.Fatalf("rejoin: %v %v", err, ja)
	}
	if members, err := ja.GetMembers(); err != nil || len(members) != 1 {
		t.Fatalf("after the dead member's session timeout the group has members %v (%v), want only A", members, err)
	}
}
