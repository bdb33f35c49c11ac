package agentrpc

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/secrets"
)

const defaultTavusURL = "https://tavusapi.com"

// tavusVideo is the part of Tavus' video object the service reads.
type tavusVideo struct {
	VideoID     string `json:"video_id"`
	VideoName   string `json:"video_name"`
	Status      string `json:"status"`
	DownloadURL string `json:"download_url"`
	HostedURL   string `json:"hosted_url"`
	CreatedAt   string `json:"created_at"`
}

// CreateVideo implements agentv1connect.AgentServiceHandler. Videos are scoped to the tenant through their Tavus
// video_name, which is prefixed with the tenant; GetVideo answers NotFound for another tenant's video.
func (s *Server) CreateVideo(ctx context.Context, req *connect.Request[agentv1.CreateVideoRequest]) (*connect.Response[agentv1.CreateVideoResponse], error) {
	tenant := principal.TenantOf(ctx)
	body, _ := json.Marshal(map[string]string{
		"replica_id": req.Msg.GetReplicaId(),
		"script":     req.Msg.GetScript(),
		"video_name": tenant + "/" + req.Msg.GetName(),
	})
	var v tavusVideo
	if err := s.tavus(ctx, tenant, http.MethodPost, "/v2/videos", body, "replica_id", &v); err != nil {
		return nil, s.connectError(ctx, err)
	}
	if v.VideoID == "" {
		return nil, s.connectError(ctx, fmt.Errorf("the Tavus API answered without a video_id: %w", errUnavailable))
	}
	return connect.NewResponse(&agentv1.CreateVideoResponse{Video: toVideo(v)}), nil
}

// GetVideo implements agentv1connect.AgentServiceHandler.
func (s *Server) GetVideo(ctx context.Context, req *connect.Request[agentv1.GetVideoRequest]) (*connect.Response[agentv1.GetVideoResponse], error) {
	tenant := principal.TenantOf(ctx)
	var v tavusVideo
	if err := s.tavus(ctx, tenant, http.MethodGet, "/v2/videos/"+url.PathEscape(req.Msg.GetId()), nil, "id", &v); err != nil {
		return nil, s.connectError(ctx, err)
	}
	if !strings.HasPrefix(v.VideoName, tenant+"/") {
		return nil, s.connectError(ctx, fmt.Errorf("video %q: %w", req.Msg.GetId(), agent.ErrNotFound))
	}
	return connect.NewResponse(&agentv1.GetVideoResponse{Video: toVideo(v)}), nil
}

// tavus calls the Tavus API and decodes its JSON answer into out.
func (s *Server) tavus(ctx context.Context, tenant, method, path string, body []byte, field string, out any) error {
	apiKey, err := s.providerKey(ctx, tenant, secrets.ProviderTavus, s.cfg.TavusAPIKey)
	if err != nil {
		return err
	}
	if apiKey == "" {
		return agent.PreconditionError("video provider Tavus is not configured: no API key")
	}
	base := strings.TrimSuffix(orDefault(s.cfg.TavusBaseURL, defaultTavusURL), "/")
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return fmt.Errorf("tavus: %w", err)
	}
	req.Header.Set("x-api-key", apiKey.Reveal())
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return markProvider("tavus", s.guard(ctx, tenant, "tavus", func() error {
		resp, err := s.providerClient().Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("the Tavus API cannot be reached: %w", errUnavailable)
		}
		defer resp.Body.Close()
		if err := providerStatus("Tavus", resp, field); err != nil {
			return err
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(out); err != nil {
			return fmt.Errorf("the Tavus API answered malformed JSON: %w", errUnavailable)
		}
		return nil
	}))
}

func toVideo(v tavusVideo) *agentv1.Video {
	out := &agentv1.Video{Id: v.VideoID}
	switch strings.ToLower(v.Status) {
	case "queued", "generating", "":
		out.State = agentv1.VideoState_VIDEO_STATE_RENDERING
	case "ready":
		out.State = agentv1.VideoState_VIDEO_STATE_READY
		out.Url = v.DownloadURL
		if out.Url == "" {
			out.Url = v.HostedURL
		}
	default: // "error", "deleted"
		out.State = agentv1.VideoState_VIDEO_STATE_FAILED
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05", "Mon, 02 Jan 2006 15:04:05 MST"} {
		if t, err := time.Parse(layout, v.CreatedAt); err == nil {
			out.CreateTime = timestamppb.New(t)
			break
		}
	}
	return out
}
