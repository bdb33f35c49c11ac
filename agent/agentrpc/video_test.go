package agentrpc_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// fakeTavus speaks the documented Tavus video API: POST /v2/videos and GET /v2/videos/{id}.
func fakeTavus(t *testing.T) *httptest.Server {
	var (
		mu     sync.Mutex
		videos = map[string]map[string]any{}
	)
	mux := http.NewServeMux()
	auth := func(w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("x-api-key") != "tavus-key" {
			http.Error(w, `{"message":"Invalid access token"}`, http.StatusUnauthorized)
			return false
		}
		return true
	}
	mux.HandleFunc("POST /v2/videos", func(w http.ResponseWriter, r *http.Request) {
		if !auth(w, r) {
			return
		}
		var body map[string]string
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body["replica_id"] == "" || body["script"] == "" {
			http.Error(w, `{"message":"replica_id and script are required"}`, http.StatusBadRequest)
			return
		}
		mu.Lock()
		id := "vid" + string(rune('0'+len(videos)))
		videos[id] = map[string]any{"video_id": id, "video_name": body["video_name"], "status": "queued",
			"created_at": "2026-11-25T10:00:00Z"}
		v := videos[id]
		mu.Unlock()
		json.NewEncoder(w).Encode(v)
	})
	mux.HandleFunc("GET /v2/videos/{id}", func(w http.ResponseWriter, r *http.Request) {
		if !auth(w, r) {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		v, ok := videos[r.PathValue("id")]
		if !ok {
			http.Error(w, `{"message":"not found"}`, http.StatusNotFound)
			return
		}
		v["status"], v["download_url"] = "ready", "https://cdn.example.com/"+r.PathValue("id")+".mp4"
		json.NewEncoder(w).Encode(v)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func TestVideo(t *testing.T) {
	t.Parallel()
	tavus := fakeTavus(t)
	h := newHarness(t, agentrpc.Config{TavusAPIKey: "tavus-key", TavusBaseURL: tavus.URL})
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		ctx := testCtx(t)
		created, err := c.CreateVideo(ctx, &agentv1.CreateVideoRequest{ReplicaId: "r1", Script: "Hello!", Name: "intro"})
		if err != nil {
			t.Fatal(err)
		}
		v := created.GetVideo()
		if v.GetId() == "" || v.GetState() != agentv1.VideoState_VIDEO_STATE_RENDERING || v.GetCreateTime() == nil {
			t.Fatalf("created video = %v, want rendering with id and time", v)
		}
		got, err := c.GetVideo(ctx, &agentv1.GetVideoRequest{Id: v.GetId()})
		if err != nil {
			t.Fatal(err)
		}
		if got.GetVideo().GetState() != agentv1.VideoState_VIDEO_STATE_READY || got.GetVideo().GetUrl() != "https://cdn.example.com/"+v.GetId()+".mp4" {
			t.Errorf("video = %v, want ready with its URL", got.GetVideo())
		}
		_, err = c.GetVideo(asTenant(ctx, "other"), &agentv1.GetVideoRequest{Id: v.GetId()})
		wantCode(t, err, codes.NotFound, "")
		_, err = c.GetVideo(ctx, &agentv1.GetVideoRequest{Id: "missing"})
		wantCode(t, err, codes.NotFound, "")
		_, err = c.CreateVideo(ctx, &agentv1.CreateVideoRequest{ReplicaId: "r1", Script: ""})
		wantCode(t, err, codes.InvalidArgument, "script")
	})
	none := newHarness(t, agentrpc.Config{})
	_, err := none.clients["grpc"].CreateVideo(testCtx(t), &agentv1.CreateVideoRequest{ReplicaId: "r1", Script: "hi"})
	wantCode(t, err, codes.FailedPrecondition, "Tavus is not configured")
	bad := newHarness(t, agentrpc.Config{TavusAPIKey: "wrong", TavusBaseURL: tavus.URL})
	_, err = bad.clients["connect"].CreateVideo(testCtx(t), &agentv1.CreateVideoRequest{ReplicaId: "r1", Script: "hi"})
	wantCode(t, err, codes.FailedPrecondition, "rejected the configured API key")
}
