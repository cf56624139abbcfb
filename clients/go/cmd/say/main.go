// Command say speaks text through a cosyvoice-sidecar and writes the audio
// to a file.
//
//	say [flags] [text ...]
//
// The text is the arguments, or standard input when there are none; each
// line of standard input is streamed to the sidecar as soon as it is read.
// PCM audio is written as a WAV file (16-bit mono at the sample rate the
// sidecar reports); wav, mp3 and opus are written as received. A one-line
// summary goes to standard output, errors to standard error.
//
// Flags:
//
//	-addr         sidecar address (default 127.0.0.1:50051)
//	-o            output file (default say.wav, say.mp3 or say.opus by format)
//	-voice        voice, e.g. longanyang (default: the sidecar's)
//	-model        model, e.g. cosyvoice-v3-flash (default: the sidecar's)
//	-format       pcm, wav, mp3 or opus (default: the sidecar's)
//	-sample-rate  sample rate in Hz (default: the sidecar's)
//	-timeout      deadline of the whole call (default 2m)
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/status"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/cosyvoice"
	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/sidecarv1"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

var formats = map[string]sidecarv1.AudioFormat{
	"":     sidecarv1.AudioFormat_AUDIO_FORMAT_UNSPECIFIED,
	"pcm":  sidecarv1.AudioFormat_AUDIO_FORMAT_PCM,
	"wav":  sidecarv1.AudioFormat_AUDIO_FORMAT_WAV,
	"mp3":  sidecarv1.AudioFormat_AUDIO_FORMAT_MP3,
	"opus": sidecarv1.AudioFormat_AUDIO_FORMAT_OPUS,
}

// extensions names the default output file by the resolved format; pcm
// becomes a WAV file.
var extensions = map[sidecarv1.AudioFormat]string{
	sidecarv1.AudioFormat_AUDIO_FORMAT_PCM:  ".wav",
	sidecarv1.AudioFormat_AUDIO_FORMAT_WAV:  ".wav",
	sidecarv1.AudioFormat_AUDIO_FORMAT_MP3:  ".mp3",
	sidecarv1.AudioFormat_AUDIO_FORMAT_OPUS: ".opus",
}

// run is the whole command, with its I/O passed in so that tests call it.
// It returns the exit status: 0 on success, 2 for bad usage, 1 otherwise.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("say", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:50051", "sidecar address")
	out := fs.String("o", "", "output file (default say.wav, say.mp3 or say.opus by format)")
	voice := fs.String("voice", "", "voice, e.g. longanyang (default: the sidecar's)")
	model := fs.String("model", "", "model, e.g. cosyvoice-v3-flash (default: the sidecar's)")
	format := fs.String("format", "", "pcm, wav, mp3 or opus (default: the sidecar's)")
	rate := fs.Int("sample-rate", 0, "sample rate in Hz (default: the sidecar's)")
	timeout := fs.Duration("timeout", 2*time.Minute, "deadline of the whole call")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: say [flags] [text ...]   (no text: read standard input)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	f, ok := formats[*format]
	if !ok {
		fmt.Fprintf(stderr, "say: unknown -format %q (want pcm, wav, mp3 or opus)\n", *format)
		return 2
	}
	cfg := &sidecarv1.SynthesisConfig{Model: *model, Voice: *voice, Format: f, SampleRateHz: int32(*rate)}

	var text io.Reader = stdin
	if fs.NArg() > 0 {
		text = strings.NewReader(strings.Join(fs.Args(), " "))
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	audio, res, err := say(ctx, *addr, cfg, text)
	if err != nil {
		fmt.Fprintf(stderr, "say: %s\n", describe(err))
		return 1
	}

	started, completed := res.Started, res.Completed
	data := audio
	if started.GetFormat() == sidecarv1.AudioFormat_AUDIO_FORMAT_PCM {
		data = cosyvoice.WAV(audio, int(started.GetSampleRateHz()))
	}
	path := *out
	if path == "" {
		path = "say" + extensions[started.GetFormat()]
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		fmt.Fprintf(stderr, "say: %v\n", err)
		return 1
	}
	seconds := "? s audio" // mp3 and opus chunks carry no duration
	if d := completed.GetAudioDurationMs(); d > 0 {
		seconds = fmt.Sprintf("%.2f s audio", d/1000)
	}
	fmt.Fprintf(stdout, "%s: first audio %.0f ms, %s, %d bytes (%s %d Hz, voice %s, task %s)\n",
		path, completed.GetFirstAudioMs(), seconds, completed.GetAudioBytes(),
		strings.ToLower(strings.TrimPrefix(started.GetFormat().String(), "AUDIO_FORMAT_")),
		started.GetSampleRateHz(), started.GetVoice(), started.GetTaskId())
	return 0
}

// say streams text line by line to the sidecar at addr while collecting
// the audio.
func say(ctx context.Context, addr string, cfg *sidecarv1.SynthesisConfig, text io.Reader) ([]byte, *cosyvoice.Result, error) {
	client, err := cosyvoice.NewClient(addr)
	if err != nil {
		return nil, nil, err
	}
	defer client.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Stream(ctx, cfg)
	if err != nil {
		return nil, nil, err
	}

	sent := make(chan error, 1)
	go func() {
		err := send(stream, text)
		sent <- err // before the cancel, so the receive side finds it
		if err != nil {
			stream.Cancel()
		}
	}()

	var audio []byte
	var recvErr error
	for chunk, err := range stream.Audio() {
		if err != nil {
			recvErr = err
			break
		}
		audio = append(audio, chunk...)
	}
	if recvErr != nil {
		select {
		case err := <-sent:
			if err != nil {
				return nil, nil, err // the cause of the cancellation
			}
		default: // a sender blocked on reading stdin is abandoned
		}
		return nil, nil, recvErr
	}
	if err := <-sent; err != nil {
		return nil, nil, err
	}
	return audio, stream.Result(), nil
}

// send streams the lines of text, then finishes the stream. An empty text
// is an error; the caller then cancels the stream.
func send(stream *cosyvoice.Stream, text io.Reader) error {
	r := bufio.NewReader(text)
	sentAny := false
	for {
		line, err := r.ReadString('\n')
		if strings.TrimSpace(line) != "" {
			if err := stream.SendText(line); err != nil {
				return ignoreEOF(err)
			}
			sentAny = true
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading text: %w", err)
		}
	}
	if !sentAny {
		return errors.New("no text to say")
	}
	return ignoreEOF(stream.Finish())
}

// ignoreEOF drops io.EOF from a send: the sidecar ended the call, and the
// receive side reports why.
func ignoreEOF(err error) error {
	if err == io.EOF {
		return nil
	}
	return err
}

// describe renders a gRPC status as "CODE: message".
func describe(err error) string {
	if s, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", s.Code(), s.Message())
	}
	return err.Error()
}
