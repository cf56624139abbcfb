package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/internal/sidecartest"
)

func TestMain(m *testing.M) { os.Exit(sidecartest.Main(m)) }

var summary = regexp.MustCompile(`^(\S+): first audio (\d+) ms, ([0-9.]+|\?) s audio, (\d+) bytes \((\w+) (\d+) Hz, voice (\S+), task (\S+)\)\n$`)

// say runs the command and returns its exit status, stdout and stderr.
func runSay(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sidecartest.Scale(30*time.Second))
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, args, strings.NewReader(stdin), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// upstreamAudio returns the emulator's length and sha256 of the task named
// in a summary line.
func upstreamAudio(t *testing.T, sc *sidecartest.Sidecar, taskID string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), sidecartest.Scale(10*time.Second))
	defer cancel()
	task, err := sc.WaitTask(ctx, taskID, sidecartest.Ended)
	if err != nil {
		t.Fatal(err)
	}
	if task.Outcome != "finished" {
		t.Fatalf("upstream task %s ended %q", taskID, task.Outcome)
	}
	return task.AudioBytes, task.AudioSHA256
}

func hexSHA(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func TestArgumentsToWAVFile(t *testing.T) {
	sc := sidecartest.Get(t)
	out := filepath.Join(t.TempDir(), "hello.wav")
	code, stdout, stderr := runSay(t, "", "-addr", sc.Addr, "-o", out, "-voice", "longanyang",
		"-format", "pcm", "-sample-rate", "16000", "Hello", "from", "say.")
	if code != 0 {
		t.Fatalf("exit %d, stderr: %s", code, stderr)
	}
	m := summary.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("summary line %q does not match %v", stdout, summary)
	}
	if m[1] != out || m[5] != "pcm" || m[6] != "16000" || m[7] != "longanyang" || m[3] == "?" {
		t.Errorf("summary %q", stdout)
	}
	wav, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(wav) < 44 || string(wav[0:4]) != "RIFF" || string(wav[8:12]) != "WAVE" ||
		binary.LittleEndian.Uint32(wav[24:]) != 16000 || binary.LittleEndian.Uint32(wav[40:]) != uint32(len(wav)-44) {
		t.Fatalf("not a 16 kHz WAV file: % x", wav[:min(len(wav), 44)])
	}
	pcm := wav[44:]
	n, sha := upstreamAudio(t, sc, m[8])
	if len(pcm) != n || hexSHA(pcm) != sha || strconv.Itoa(n) != m[4] {
		t.Fatalf("WAV samples: %d bytes sha256 %s, summary says %s bytes; upstream sent %d bytes sha256 %s",
			len(pcm), hexSHA(pcm), m[4], n, sha)
	}
	seconds, _ := strconv.ParseFloat(m[3], 64)
	if want := float64(n) / 2 / 16000; seconds < want-0.01 || seconds > want+0.01 {
		t.Errorf("summary says %s s of audio, the samples last %.2f s", m[3], want)
	}
}

func TestStdinLinesToMP3File(t *testing.T) {
	sc := sidecartest.Get(t)
	out := filepath.Join(t.TempDir(), "lines.mp3")
	code, stdout, stderr := runSay(t, "First line of input.\n\nSecond line, no newline at the end",
		"-addr", sc.Addr, "-o", out, "-format", "mp3")
	if code != 0 {
		t.Fatalf("exit %d, stderr: %s", code, stderr)
	}
	m := summary.FindStringSubmatch(stdout)
	if m == nil || m[5] != "mp3" {
		t.Fatalf("summary line %q", stdout)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	n, sha := upstreamAudio(t, sc, m[8])
	if len(data) != n || hexSHA(data) != sha {
		t.Fatalf("file: %d bytes sha256 %s; upstream sent %d bytes sha256 %s", len(data), hexSHA(data), n, sha)
	}
}

func TestInvalidArgumentIsReported(t *testing.T) {
	sc := sidecartest.Get(t)
	out := filepath.Join(t.TempDir(), "never.wav")
	code, stdout, stderr := runSay(t, "", "-addr", sc.Addr, "-o", out, "-sample-rate", "12345", "Odd rate.")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "InvalidArgument") || !strings.Contains(stderr, "sample_rate") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want exit 1 and an InvalidArgument naming sample_rate", code, stdout, stderr)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("an output file was written: %v", err)
	}
}

func TestNoTextIsAnError(t *testing.T) {
	sc := sidecartest.Get(t)
	code, _, stderr := runSay(t, "  \n\n", "-addr", sc.Addr, "-o", filepath.Join(t.TempDir(), "x.wav"))
	if code != 1 || !strings.Contains(stderr, "no text to say") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestUnknownFormatIsUsageError(t *testing.T) {
	code, _, stderr := runSay(t, "", "-format", "flac", "text")
	if code != 2 || !strings.Contains(stderr, `unknown -format "flac"`) {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}
