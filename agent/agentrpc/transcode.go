package agentrpc

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"

	"github.com/loom-dev/loom/agent"
	agentv1 "github.com/loom-dev/loom/gen/loom/agent/v1"
)

// audioMIME is the media type of each format.
var audioMIME = map[agentv1.AudioFormat]string{
	agentv1.AudioFormat_AUDIO_FORMAT_WAV:      "audio/wav",
	agentv1.AudioFormat_AUDIO_FORMAT_MP3:      "audio/mpeg",
	agentv1.AudioFormat_AUDIO_FORMAT_OGG_OPUS: "audio/ogg",
}

// ffmpegFormat is each format's ffmpeg container and encoder arguments.
var ffmpegFormat = map[agentv1.AudioFormat][]string{
	agentv1.AudioFormat_AUDIO_FORMAT_WAV:      {"-c:a", "pcm_s16le", "-f", "wav"},
	agentv1.AudioFormat_AUDIO_FORMAT_MP3:      {"-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"},
	agentv1.AudioFormat_AUDIO_FORMAT_OGG_OPUS: {"-c:a", "libopus", "-b:a", "48k", "-f", "ogg"},
}

// ffmpegInput is the demuxer for each native format.
var ffmpegInput = map[agentv1.AudioFormat]string{
	agentv1.AudioFormat_AUDIO_FORMAT_WAV: "wav",
	agentv1.AudioFormat_AUDIO_FORMAT_MP3: "mp3",
}

// ffmpeg returns the path of the ffmpeg binary, or an InvalidArgument error naming format when the server has
// none: the client asked for a format only transcoding can give.
func (s *Server) ffmpeg(format agentv1.AudioFormat) (string, error) {
	bin := s.cfg.FFmpegPath
	if bin == "" {
		bin = "ffmpeg"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return "", &agent.FieldError{Field: "format", Reason: fmt.Sprintf("%s needs ffmpeg to transcode, and this server has none; ask for the voice's native format", format)}
	}
	return path, nil
}

// transcode converts audio from one format to another with ffmpeg at path, reading at most maxWAVBytes of
// output. A WAV result gets its real sizes (ffmpeg cannot seek back on a pipe).
func transcode(ctx context.Context, path string, audio []byte, from, to agentv1.AudioFormat) ([]byte, error) {
	args := []string{"-hide_banner", "-loglevel", "error", "-f", ffmpegInput[from], "-i", "pipe:0", "-vn"}
	args = append(args, ffmpegFormat[to]...)
	cmd := exec.CommandContext(ctx, path, append(args, "pipe:1")...)
	cmd.Stdin = bytes.NewReader(audio)
	var stderr bytes.Buffer
	cmd.Stderr = &limitedWriter{w: &stderr, n: 4096}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("ffmpeg: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("ffmpeg: start: %w", err)
	}
	data, readErr := io.ReadAll(io.LimitReader(out, maxWAVBytes+1))
	if readErr == nil && len(data) > maxWAVBytes {
		readErr = &agent.FieldError{Field: "text", Reason: fmt.Sprintf("speech longer than %d MiB of audio", maxWAVBytes>>20)}
	}
	if readErr != nil {
		_ = cmd.Process.Kill()
	}
	waitErr := cmd.Wait()
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case readErr != nil:
		return nil, readErr
	case waitErr != nil:
		return nil, fmt.Errorf("ffmpeg %s to %s failed: %v: %s", from, to, waitErr, strings.TrimSpace(stderr.String()))
	}
	if to == agentv1.AudioFormat_AUDIO_FORMAT_WAV {
		if err := fixWAVSizes(data); err != nil {
			return nil, fmt.Errorf("ffmpeg: %w", err)
		}
	}
	return data, nil
}
