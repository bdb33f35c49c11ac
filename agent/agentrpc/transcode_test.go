package agentrpc_test

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"testing"

	"github.com/loom-dev/loom/agent/agentrpc"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// needTools skips without espeak-ng and ffmpeg, except in CI (CI=true), which installs both and where the
// transcoding paths must run.
func needTools(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"espeak-ng", "ffmpeg"} {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s is not installed; .ci/packages.sh installs it", bin)
			}
			t.Skipf("%s is not installed (apt-get install -y %s)", bin, bin)
		}
	}
}

// isMP3 reports whether b starts with an ID3 tag or an MPEG audio frame sync.
func isMP3(b []byte) bool {
	return bytes.HasPrefix(b, []byte("ID3")) || (len(b) > 2 && b[0] == 0xFF && b[1]&0xE0 == 0xE0)
}

// TestSynthesizeSpeechTranscoded asks each voice provider for the formats it does not produce: espeak-ng's WAV
// becomes MP3 and Ogg Opus, ElevenLabs' MP3 becomes a WAV with its real sizes, each a file a decoder accepts
// (ffmpeg decodes it back in the test), through both clients.
func TestSynthesizeSpeechTranscoded(t *testing.T) {
	t.Parallel()
	needTools(t)
	// An MP3 ElevenLabs would send: espeak-ng speech encoded by ffmpeg.
	wav, err := exec.Command("espeak-ng", "--stdout", "hello from eleven labs").Output()
	if err != nil {
		t.Fatal(err)
	}
	enc := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "wav", "-i", "pipe:0", "-c:a", "libmp3lame", "-f", "mp3", "pipe:1")
	enc.Stdin = bytes.NewReader(wav)
	mp3, err := enc.Output()
	if err != nil || !isMP3(mp3) {
		t.Fatalf("make a test MP3: %v", err)
	}
	el := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "audio/mpeg")
		_, _ = w.Write(mp3)
	}))
	t.Cleanup(el.Close) // the subtests run after this function returns
	h := newHarness(t, agentrpc.Config{ElevenLabsAPIKey: "el-key", ElevenLabsBaseURL: el.URL})
	eleven := &agentv1.Voice{Provider: agentv1.VoiceProvider_VOICE_PROVIDER_ELEVENLABS, VoiceId: "voice-42"}
	decodes := func(t *testing.T, audio []byte) {
		t.Helper()
		dec := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-f", "null", "-")
		dec.Stdin = bytes.NewReader(audio)
		if out, err := dec.CombinedOutput(); err != nil {
			t.Errorf("ffmpeg cannot decode the result: %v: %s", err, out)
		}
	}
	h.eachClient(t, func(t *testing.T, c agentv1.AgentServiceClient) {
		ctx := testCtx(t)
		for _, tc := range []struct {
			name   string
			voice  *agentv1.Voice
			format agentv1.AudioFormat
			mime   string
			check  func([]byte) bool
		}{
			{"espeak to mp3", nil, agentv1.AudioFormat_AUDIO_FORMAT_MP3, "audio/mpeg", isMP3},
			{"espeak to ogg opus", nil, agentv1.AudioFormat_AUDIO_FORMAT_OGG_OPUS, "audio/ogg", func(b []byte) bool {
				return bytes.HasPrefix(b, []byte("OggS")) && bytes.Contains(b[:min(len(b), 200)], []byte("OpusHead"))
			}},
			{"elevenlabs to wav", eleven, agentv1.AudioFormat_AUDIO_FORMAT_WAV, "audio/wav", func(b []byte) bool {
				data := bytes.Index(b, []byte("data"))
				return bytes.HasPrefix(b, []byte("RIFF")) && int(binary.LittleEndian.Uint32(b[4:8])) == len(b)-8 &&
					data > 0 && int(binary.LittleEndian.Uint32(b[data+4:data+8])) == len(b)-data-8
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				chunks, err := recvAll(c.SynthesizeSpeech(ctx, &agentv1.SynthesizeSpeechRequest{Text: "Hello from the loom agent service.", Voice: tc.voice, Format: tc.format}))
				if err != nil {
					t.Fatal(err)
				}
				got, mime := audio(t, chunks)
				if mime != tc.mime || !tc.check(got) {
					t.Fatalf("got %d bytes of %q starting %q, want %s", len(got), mime, got[:min(16, len(got))], tc.mime)
				}
				decodes(t, got)
				t.Logf("%s: %d bytes in %d chunks", tc.name, len(got), len(chunks))
			})
		}
	})
}
