package agentrpc_test

import (
	"context"
	"errors"
	"io"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// TestRunPinnedAgentVersion: Run and RunStream run the agent version asked for (0: the latest), a version that
// does not exist is NotFound naming it, and RunStream records the blueprint it is for, like Run. Over Connect
// and grpc-go.
func TestRunPinnedAgentVersion(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{})
	h.eachNamedClient(t, "pin-", func(t *testing.T, ctx context.Context, c agentv1.AgentServiceClient, name string) {
		a1 := create(t, ctx, c, &agentv1.Agent{Name: name, Instructions: "v1"})
		if _, err := c.UpdateAgent(ctx, &agentv1.UpdateAgentRequest{Agent: &agentv1.Agent{Name: name, Instructions: "v2"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"instructions"}}, Etag: a1.GetEtag()}); err != nil {
			t.Fatal(err)
		}
		for _, tc := range []struct{ asked, want int64 }{{0, 2}, {1, 1}, {2, 2}} {
			resp, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "hi", AgentVersion: tc.asked})
			if err != nil {
				t.Fatalf("Run(version %d): %v", tc.asked, err)
			}
			if got := resp.GetRun().GetAgentVersion(); got != tc.want {
				t.Errorf("Run(version %d) ran version %d, want %d", tc.asked, got, tc.want)
			}
		}
		_, err := c.Run(ctx, &agentv1.RunRequest{Agent: name, Input: "hi", AgentVersion: 3})
		wantCode(t, err, codes.NotFound, "version 3")

		stream, err := c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: name, Input: "hi", AgentVersion: 1, Blueprint: "flow"})
		if err != nil {
			t.Fatal(err)
		}
		var run *agentv1.Run
		for {
			ev, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("RunStream: %v", err)
			}
			if s := ev.GetStarted(); s != nil && s.GetAgentVersion() != 1 {
				t.Errorf("RunStream started version %d, want 1", s.GetAgentVersion())
			}
			if r := ev.GetCompleted(); r != nil {
				run = r
			}
		}
		if run.GetAgentVersion() != 1 || run.GetBlueprint() != "flow" {
			t.Errorf("streamed run: version %d, blueprint %q; want 1, flow", run.GetAgentVersion(), run.GetBlueprint())
		}
		stream, err = c.RunStream(ctx, &agentv1.RunStreamRequest{Agent: name, Input: "hi", AgentVersion: 7})
		if err == nil {
			_, err = stream.Recv()
		}
		wantCode(t, err, codes.NotFound, "version 7")
	})
}
