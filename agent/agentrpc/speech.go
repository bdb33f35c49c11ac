package agentrpc

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os/exec"
	"strings"

	"connectrpc.com/connect"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
	"github.com/loom-dev/loom/internal/principal"
	"github.com/loom-dev/loom/internal/secrets"
)

const (
	// audioChunk is the size of the audio chunks SynthesizeSpeech streams.
	audioChunk             = 32 << 10
	defaultEspeakVoice     = "en-us"
	defaultElevenLabsURL   = "https://api.elevenlabs.io"
	defaultElevenLabsModel = "eleven_multilingual_v2"
)

// SynthesizeSpeech implements agentv1connect.AgentServiceHandler. The voice is the request's, else the agent's,
// else espeak-ng's "en-us". espeak-ng produces WAV and ElevenLabs MP3; other formats are transcoded with ffmpeg.
func (s *Server) SynthesizeSpeech(ctx context.Context, req *connect.Request[agentv1.SynthesizeSpeechRequest], stream *connect.ServerStream[agentv1.SynthesizeSpeechResponse]) error {
	tenant := principal.TenantOf(ctx)
	voice := req.Msg.GetVoice()
	if voice == nil && req.Msg.GetAgent() != "" {
		a, err := s.store.GetAgent(ctx, tenant, req.Msg.GetAgent(), 0)
		if err != nil {
			return s.connectError(ctx, err)
		}
		voice = a.GetVoice()
	}
	first := true
	send := func(b []byte, mime string) error {
		msg := &agentv1.SynthesizeSpeechResponse{Audio: b}
		if first {
			msg.MimeType, first = mime, false
		}
		return stream.Send(msg)
	}
	if err := agent.CheckVoice(voice, "voice"); err != nil {
		return s.connectError(ctx, err)
	}
	// Each provider has a native format; another is transcoded with ffmpeg from the provider's whole output
	// (bounded), so its chunks start after synthesis instead of as it goes.
	nativeFormat := agentv1.AudioFormat_AUDIO_FORMAT_WAV
	if voice.GetProvider() == agentv1.VoiceProvider_VOICE_PROVIDER_ELEVENLABS {
		nativeFormat = agentv1.AudioFormat_AUDIO_FORMAT_MP3
	}
	format := req.Msg.GetFormat()
	if format == agentv1.AudioFormat_AUDIO_FORMAT_UNSPECIFIED {
		format = nativeFormat
	}
	var (
		ffmpeg string
		err    error
	)
	var nativeBuf bytes.Buffer
	out := send
	if format != nativeFormat {
		if ffmpeg, err = s.ffmpeg(format); err != nil {
			return s.connectError(ctx, err)
		}
		out = func(b []byte, _ string) error {
			if nativeBuf.Len()+len(b) > maxWAVBytes {
				return &agent.FieldError{Field: "text", Reason: fmt.Sprintf("speech longer than %d MiB of audio", maxWAVBytes>>20)}
			}
			nativeBuf.Write(b)
			return nil
		}
	}
	switch voice.GetProvider() {
	case agentv1.VoiceProvider_VOICE_PROVIDER_UNSPECIFIED, agentv1.VoiceProvider_VOICE_PROVIDER_ESPEAK:
		err = s.speakEspeak(ctx, req.Msg.GetText(), voice.GetVoiceId(), out)
	case agentv1.VoiceProvider_VOICE_PROVIDER_ELEVENLABS:
		err = markProvider("elevenlabs", s.guard(ctx, tenant, "elevenlabs", func() error {
			return s.speakElevenLabs(ctx, tenant, req.Msg.GetText(), voice.GetVoiceId(), out)
		}))
	default:
		err = &agent.FieldError{Field: "voice.provider", Reason: "unknown provider"}
	}
	if err == nil && ffmpeg != "" {
		var audio []byte
		if audio, err = transcode(ctx, ffmpeg, nativeBuf.Bytes(), nativeFormat, format); err == nil {
			_, err = streamChunks(bytes.NewReader(audio), audioMIME[format], send)
		}
	}
	return s.connectError(ctx, err)
}

// speakEspeak runs espeak-ng with the text on stdin and streams its WAV output.
func (s *Server) speakEspeak(ctx context.Context, text, voice string, send func([]byte, string) error) error {
	if voice == "" {
		voice = defaultEspeakVoice
	}
	if !agent.EspeakVoice(voice) {
		return &agent.FieldError{Field: "voice.voice_id", Reason: "not an espeak-ng voice name"}
	}
	bin := s.cfg.EspeakPath
	if bin == "" {
		bin = "espeak-ng"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return agent.PreconditionError("espeak-ng is not installed")
	}
	cmd := exec.CommandContext(ctx, path, "--stdout", "-v", voice)
	cmd.Stdin = strings.NewReader(text)
	var stderr bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &stderr, n: 4096}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("espeak-ng: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("espeak-ng: start: %w", err)
	}
	// espeak-ng writes a WAV header with placeholder sizes (it streams), which strict players and decoders
	// refuse: the whole output is read (bounded), its RIFF and data sizes set to the real ones, then streamed.
	wav, readErr := io.ReadAll(io.LimitReader(out, maxWAVBytes+1))
	if readErr == nil && len(wav) > maxWAVBytes {
		readErr = &agent.FieldError{Field: "text", Reason: fmt.Sprintf("speech longer than %d MiB of audio", maxWAVBytes>>20)}
	}
	if readErr != nil {
		_ = cmd.Process.Kill() // nobody reads its output any more; Wait would block on the full pipe
	}
	waitErr := cmd.Wait()
	if readErr == nil && len(wav) <= 44 && strings.Contains(stderr.String(), "voice does not exist") {
		return &agent.FieldError{Field: "voice.voice_id", Reason: fmt.Sprintf("espeak-ng has no voice %q", voice)}
	}
	sent, copyErr := 0, readErr
	if readErr == nil && waitErr == nil && ctx.Err() == nil {
		if err := fixWAVSizes(wav); err != nil {
			return fmt.Errorf("espeak-ng: %w", err)
		}
		sent, copyErr = streamChunks(bytes.NewReader(wav), "audio/wav", send)
	}
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case copyErr != nil:
		return copyErr
	case waitErr != nil && sent == 0 && strings.Contains(stderr.String(), "voice does not exist"):
		return &agent.FieldError{Field: "voice.voice_id", Reason: fmt.Sprintf("espeak-ng has no voice %q", voice)}
	case waitErr != nil:
		return fmt.Errorf("espeak-ng failed: %v: %s", waitErr, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// speakElevenLabs streams MP3 from ElevenLabs' text-to-speech stream endpoint.
func (s *Server) speakElevenLabs(ctx context.Context, tenant, text, voiceID string, send func([]byte, string) error) error {
	apiKey, err := s.providerKey(ctx, tenant, secrets.ProviderElevenLabs, s.cfg.ElevenLabsAPIKey)
	if err != nil {
		return err
	}
	if apiKey == "" {
		return agent.PreconditionError("ElevenLabs is not configured: no API key")
	}
	if voiceID == "" {
		return &agent.FieldError{Field: "voice.voice_id", Reason: "required for ElevenLabs"}
	}
	base := strings.TrimSuffix(orDefault(s.cfg.ElevenLabsBaseURL, defaultElevenLabsURL), "/")
	body, _ := json.Marshal(map[string]string{"text": text, "model_id": orDefault(s.cfg.ElevenLabsModel, defaultElevenLabsModel)})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		base+"/v1/text-to-speech/"+url.PathEscape(voiceID)+"/stream?output_format=mp3_44100_128", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("elevenlabs: %w", err)
	}
	req.Header.Set("xi-api-key", apiKey.Reveal())
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "audio/mpeg")
	resp, err := s.providerClient().Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("ElevenLabs cannot be reached: %w", errUnavailable)
	}
	defer resp.Body.Close()
	if err := providerStatus("ElevenLabs", resp, "voice.voice_id"); err != nil {
		return err
	}
	_, err = streamChunks(resp.Body, "audio/mpeg", send)
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// maxWAVBytes bounds the audio of one espeak-ng synthesis (16 KiB of text is about 15 minutes, 40 MB).
const maxWAVBytes = 64 << 20

// fixWAVSizes sets, in place, the RIFF chunk size of a WAV file to len(wav)-8 and its data chunk size to the
// bytes that follow the data chunk header, replacing the placeholders of a streamed WAV. It fails when wav is not
// a RIFF/WAVE file with a data chunk.
func fixWAVSizes(wav []byte) error {
	if len(wav) < 12 || string(wav[0:4]) != "RIFF" || string(wav[8:12]) != "WAVE" {
		return errors.New("output is not a WAV file")
	}
	if uint64(len(wav))-8 > math.MaxUint32 {
		return errors.New("WAV output too large")
	}
	binary.LittleEndian.PutUint32(wav[4:8], uint32(len(wav)-8))
	for off := 12; off+8 <= len(wav); {
		id, size := string(wav[off:off+4]), binary.LittleEndian.Uint32(wav[off+4:off+8])
		if id == "data" {
			binary.LittleEndian.PutUint32(wav[off+4:off+8], uint32(len(wav)-off-8))
			return nil
		}
		next := uint64(off) + 8 + uint64(size) + uint64(size&1) // chunks are padded to even sizes
		if next > uint64(len(wav)) {
			break
		}
		off = int(next)
	}
	return errors.New("WAV output has no data chunk")
}

// streamChunks sends r in audioChunk-sized chunks and returns the bytes sent.
func streamChunks(r io.Reader, mime string, send func([]byte, string) error) (int, error) {
	buf := make([]byte, audioChunk)
	total := 0
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if serr := send(bytes.Clone(buf[:n]), mime); serr != nil {
				return total, serr
			}
			total += n
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("read audio: %w: %w", errUnavailable, err)
		}
	}
}

// providerStatus turns a non-2xx provider reply into a domain error. It reads at most 4 KiB of the body and
// never echoes request headers (the key).
func providerStatus(name string, resp *http.Response, field string) error {
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	detail := strings.ToValidUTF8(strings.TrimSpace(string(b)), "")
	if len(detail) > 300 {
		detail = detail[:300]
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return agent.PreconditionError(fmt.Sprintf("%s rejected the configured API key (HTTP %d)", name, resp.StatusCode))
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%s: %s: %w", name, field, agent.ErrNotFound)
	case resp.StatusCode == http.StatusBadRequest || resp.StatusCode == http.StatusUnprocessableEntity:
		return &agent.FieldError{Field: field, Reason: fmt.Sprintf("%s refused the request (HTTP %d): %s", name, resp.StatusCode, detail)}
	default:
		return fmt.Errorf("%s answered HTTP %d: %w", name, resp.StatusCode, errUnavailable)
	}
}

func (s *Server) providerClient() *http.Client {
	if s.cfg.HTTPClient != nil {
		return s.cfg.HTTPClient
	}
	return http.DefaultClient
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// limitedWriter keeps the first n bytes written and discards the rest.
type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.n -= k
		if _, err := l.w.Write(p[:k]); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}
