package agentrpc

import (
	"encoding/json"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// FuzzSubmitToolResult feeds arbitrary SubmitToolResult requests (as JSON) to the checks and the encoding of
// submitted results: never a panic; an accepted result is within the size limit and survives the round trip
// through the stored wait state unchanged, so a resubmission of it compares equal.
func FuzzSubmitToolResult(f *testing.F) {
	f.Add(`{"runId":"r","results":[{"callId":"c1","result":{"forecast":"sunny"}}]}`)
	f.Add(`{"runId":"r","results":[{"callId":"c1","error":"boom"},{"callId":"c1"}]}`)
	f.Add(`{"runId":"r","results":[{"callId":"c1","result":{"a":[1,2,{"b":null}],"n":1e300}}]}`)
	f.Fuzz(func(t *testing.T, in string) {
		if len(in) > 1<<16 {
			return
		}
		var req agentv1.SubmitToolResultRequest
		if protojson.Unmarshal([]byte(in), &req) != nil {
			return
		}
		if checkResults(req.GetResults()) != nil {
			return
		}
		for _, r := range req.GetResults() {
			a := answer(r)
			b, err := json.Marshal(a)
			if err != nil {
				t.Fatalf("answer %v does not encode: %v", a, err)
			}
			if len(b) > maxClientResultBytes+64 {
				t.Fatalf("accepted a result of %d bytes", len(b))
			}
			var back clientAnswer
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("stored answer %s does not decode: %v", b, err)
			}
			if !back.equal(a) {
				t.Fatalf("answer %s changed through the wait state: %+v", b, back)
			}
		}
	})
}
