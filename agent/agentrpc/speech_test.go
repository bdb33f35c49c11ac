package agentrpc_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

func audio(t *testing.T, chunks []*agentv1.SynthesizeSpeechResponse) ([]byte, string) {
	t.Helper()
	var b bytes.Buffer
	for i, c := range chunks {
		b.Write(c.GetAudio())
		if i > 0 && c.GetMimeType() != "" {
			t.Errorf("chunk %d sets mime_type", i)
		}
		if i < len(chunks)-1 && len(c.GetAudio()) != 32<<10 {
			t.Errorf("chunk %d has %d bytes, want 32 KiB", i, len(c.GetAudio()))
		}
	}
	if len(chunks) == 0 {
		return nil, ""
	}
	return b.Bytes(), chunks[0].GetMimeType()
}

func TestSynthesizeSpeechEspeak(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("espeak-ng"); err != nil {
		t.Skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
	}
	h := newHarness(t, agentrpc.Config{})
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		ctx := testCtx(t)
		chunks, err := recvAll(c.SynthesizeSpeech(ctx, &agentv1.SynthesizeSpeechRequest{Text: "Hello from the loom agent service. This sentence is long enough for several chunks."}))
		if err != nil {
			t.Fatal(err)
		}
		wav, mime := audio(t, chunks)
		if mime != "audio/wav" || len(chunks) < 2 || !bytes.HasPrefix(wav, []byte("RIFF")) || !bytes.Equal(wav[8:12], []byte("WAVE")) {
			t.Fatalf("got %d chunks, %d bytes of %q starting %q; want a multi-chunk WAV", len(chunks), len(wav), mime, wav[:min(12, len(wav))])
		}
		// The header holds the real sizes, not espeak-ng's streaming placeholders: RIFF = file - 8, and the data
		// chunk runs exactly to the end of the file.
		if riff := binary.LittleEndian.Uint32(wav[4:8]); int(riff) != len(wav)-8 {
			t.Errorf("RIFF size %d, want %d", riff, len(wav)-8)
		}
		data := bytes.Index(wav, []byte("data"))
		if data < 12 || int(binary.LittleEndian.Uint32(wav[data+4:data+8])) != len(wav)-data-8 {
			t.Errorf("data chunk at %d: size %d, want %d", data, binary.LittleEndian.Uint32(wav[data+4:data+8]), len(wav)-data-8)
		}
		t.Logf("WAV: %d bytes, RIFF size %d, data size %d", len(wav), binary.LittleEndian.Uint32(wav[4:8]), binary.LittleEndian.Uint32(wav[data+4:data+8]))
		_, err = recvAll(c.SynthesizeSpeech(ctx, &agentv1.SynthesizeSpeechRequest{Text: "hi",
			Voice: &agentv1.Voice{VoiceId: "zzvoice"}}))
		wantCode(t, err, codes.InvalidArgument, "voice.voice_id")
	})
	// MP3 from espeak-ng needs ffmpeg: a server without it says which field to change.
	noFFmpeg := newHarness(t, agentrpc.Config{FFmpegPath: "/nonexistent/ffmpeg"})
	_, err := recvAll(noFFmpeg.clients["grpc"].SynthesizeSpeech(testCtx(t), &agentv1.SynthesizeSpeechRequest{Text: "hi", Format: agentv1.AudioFormat_AUDIO_FORMAT_MP3}))
	wantCode(t, err, codes.InvalidArgument, "format")
}

func TestSynthesizeSpeechEspeakMissing(t *testing.T) {
	t.Parallel()
	h := newHarness(t, agentrpc.Config{EspeakPath: "/nonexistent/espeak-ng"})
	_, err := recvAll(h.clients["grpc"].SynthesizeSpeech(testCtx(t), &agentv1.SynthesizeSpeechRequest{Text: "hi"}))
	wantCode(t, err, codes.FailedPrecondition, "espeak-ng is not installed")
}

func TestSynthesizeSpeechElevenLabs(t *testing.T) {
	t.Parallel()
	mp3 := bytes.Repeat([]byte("ID3-fake-mp3-frame-"), 5000) // 95 KB
	el := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/text-to-speech/voice-42/stream" {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("xi-api-key") != "el-key" {
			http.Error(w, `{"detail":{"status":"invalid_api_key"}}`, http.StatusUnauthorized)
			return
		}
		var body struct {
			Text    string `json:"text"`
			ModelID string `json:"model_id"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Text != "hello" || body.ModelID == "" {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "audio/mpeg")
		for i := 0; i < len(mp3); i += 10000 {
			w.Write(mp3[i:min(i+10000, len(mp3))])
			w.(http.Flusher).Flush()
		}
	}))
	defer el.Close()
	h := newHarness(t, agentrpc.Config{ElevenLabsAPIKey: "el-key", ElevenLabsBaseURL: el.URL})
	c := h.clients["connect"]
	ctx := testCtx(t)
	a := simAgent("speaker", nil)
	a.Voice = &agentv1.Voice{Provider: agentv1.VoiceProvider_VOICE_PROVIDER_ELEVENLABS, VoiceId: "voice-42"}
	create(t, ctx, c, a)
	chunks, err := recvAll(c.SynthesizeSpeech(ctx, &agentv1.SynthesizeSpeechRequest{Text: "hello", Agent: "speaker", Format: agentv1.AudioFormat_AUDIO_FORMAT_MP3}))
	if err != nil {
		t.Fatal(err)
	}
	got, mime := audio(t, chunks)
	if mime != "audio/mpeg" || !bytes.Equal(got, mp3) {
		t.Errorf("got %d bytes of %q, want the %d bytes served as audio/mpeg", len(got), mime, len(mp3))
	}
	noFFmpeg := newHarness(t, agentrpc.Config{ElevenLabsAPIKey: "el-key", ElevenLabsBaseURL: el.URL, FFmpegPath: "/nonexistent/ffmpeg"})
	create(t, ctx, noFFmpeg.clients["connect"], a)
	_, err = recvAll(noFFmpeg.clients["connect"].SynthesizeSpeech(ctx, &agentv1.SynthesizeSpeechRequest{Text: "hello", Agent: "speaker", Format: agentv1.AudioFormat_AUDIO_FORMAT_WAV}))
	wantCode(t, err, codes.InvalidArgument, "format")

	bad := newHarness(t, agentrpc.Config{ElevenLabsAPIKey: "wrong", ElevenLabsBaseURL: el.URL})
	_, err = recvAll(bad.clients["grpc"].SynthesizeSpeech(ctx, &agentv1.SynthesizeSpeechRequest{Text: "hello",
		Voice: &agentv1.Voice{Provider: agentv1.VoiceProvider_VOICE_PROVIDER_ELEVENLABS, VoiceId: "voice-42"}}))
	wantCode(t, err, codes.FailedPrecondition, "rejected the configured API key")
	none := newHarness(t, agentrpc.Config{})
	_, err = recvAll(none.clients["grpc"].SynthesizeSpeech(ctx, &agentv1.SynthesizeSpeechRequest{Text: "hello",
		Voice: &agentv1.Voice{Provider: agentv1.VoiceProvider_VOICE_PROVIDER_ELEVENLABS, VoiceId: "v"}}))
	wantCode(t, err, codes.FailedPrecondition, "ElevenLabs is not configured")
	_ = io.EOF
}
