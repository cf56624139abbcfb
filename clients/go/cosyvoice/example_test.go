package cosyvoice_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/cosyvoice"
	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/sidecarv1"
)

// Stream text as it is produced and write the audio as it arrives.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	client, err := cosyvoice.NewClient(os.Getenv("COSYVOICE_SIDECAR_ADDR")) // e.g. "127.0.0.1:50051"
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	stream, err := client.Stream(ctx, &sidecarv1.SynthesisConfig{
		Voice:        "longanyang",
		Format:       sidecarv1.AudioFormat_AUDIO_FORMAT_PCM,
		SampleRateHz: 24000,
	})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		for _, fragment := range []string{"Hello from Go, ", "one fragment ", "at a time."} {
			if err := stream.SendText(fragment); err != nil {
				return // the receive side reports why
			}
		}
		stream.Finish()
	}()

	var pcm []byte
	for chunk, err := range stream.Audio() {
		if err != nil {
			log.Fatal(err) // a gRPC status: status.Code(err) tells which
		}
		pcm = append(pcm, chunk...) // or play it, or forward it
	}
	res := stream.Result()
	wav := cosyvoice.WAV(pcm, int(res.Started.GetSampleRateHz()))

	fmt.Println(res.Started.GetVoice(), res.Started.GetSampleRateHz(), "Hz")
	fmt.Println("all audio received:", res.Completed.GetAudioBytes() == uint64(len(pcm)))
	fmt.Println("WAV size ok:", len(wav) == len(pcm)+cosyvoice.WAVHeaderSize)
	// Output:
	// longanyang 24000 Hz
	// all audio received: true
	// WAV size ok: true
}

// Speak one text and get the whole audio back.
func ExampleClient_Synthesize() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	client, err := cosyvoice.NewClient(os.Getenv("COSYVOICE_SIDECAR_ADDR"))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	audio, res, err := client.Synthesize(ctx, "Hello, world.", nil) // nil: the sidecar's defaults
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Started.GetFormat(), len(audio) > 0)
	// Output: AUDIO_FORMAT_PCM true
}
