package cosyvoice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/sidecarv1"
)

// Stream is one StreamingSynthesize call: text fragments go in, audio comes
// out while more text is still being sent.
//
// The send side (SendText, Flush, Finish, CloseSend) and the receive side
// (Recv, Audio, Result, Header) may be used from two different goroutines,
// but each side from one goroutine at a time.
//
// When a send method returns io.EOF, the sidecar has already ended the call;
// the receive side then returns the reason, as gRPC-Go streams do. After
// Finish or CloseSend, SendText, Flush and Finish fail at once with an error
// that wraps [ErrSendClosed], and the call goes on: its remaining audio and
// Completed still arrive.
type Stream struct {
	call   grpc.BidiStreamingClient[sidecarv1.StreamingSynthesizeRequest, sidecarv1.SynthesizeResponse]
	cancel context.CancelFunc
	recv   receiver

	mu       sync.Mutex
	closedBy string // "Finish" or "CloseSend" once the send side is closed
}

// ErrSendClosed is wrapped by the error of a send after [Stream.Finish] or
// [Stream.CloseSend]: a mistake of the caller's, caught before it reaches
// gRPC, which would otherwise end the whole call with codes.Internal.
var ErrSendClosed = errors.New("the stream's send side is closed")

// Stream starts a StreamingSynthesize call with cfg (nil means every server
// default) and sends cfg as its first message. Cancelling ctx cancels the
// call and the upstream task.
func (c *Client) Stream(ctx context.Context, cfg *sidecarv1.SynthesisConfig, opts ...grpc.CallOption) (*Stream, error) {
	if cfg == nil {
		cfg = &sidecarv1.SynthesisConfig{}
	}
	ctx, cancel := context.WithCancel(ctx)
	call, err := c.api.StreamingSynthesize(ctx, opts...)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &Stream{call: call, cancel: cancel}
	err = call.Send(&sidecarv1.StreamingSynthesizeRequest{
		Request: &sidecarv1.StreamingSynthesizeRequest_Config{Config: cfg},
	})
	if err == io.EOF {
		// The server ended the call before reading the config; its status
		// says why.
		_, err = call.Recv()
	}
	if err != nil {
		cancel()
		return nil, err
	}
	return s, nil
}

// SendText sends one fragment of text. Fragments need not be sentences;
// the sidecar and DashScope buffer them until a sentence ends, a Flush or
// the Finish.
func (s *Stream) SendText(text string) error {
	return s.send("SendText", &sidecarv1.StreamingSynthesizeRequest{
		Request: &sidecarv1.StreamingSynthesizeRequest_Text{Text: text},
	})
}

// Flush asks the sidecar to synthesize the text buffered so far without
// waiting for the end of a sentence. A FlushAcknowledged response follows
// in order with the audio.
func (s *Stream) Flush() error {
	return s.send("Flush", &sidecarv1.StreamingSynthesizeRequest{
		Request: &sidecarv1.StreamingSynthesizeRequest_Flush{Flush: &sidecarv1.Flush{}},
	})
}

// Finish says that no more text follows and half-closes the call; the
// remaining audio and the Completed response still arrive on the receive
// side.
func (s *Stream) Finish() error {
	if err := s.closeSend("Finish"); err != nil {
		return err
	}
	err := s.call.Send(&sidecarv1.StreamingSynthesizeRequest{
		Request: &sidecarv1.StreamingSynthesizeRequest_Finish{Finish: &sidecarv1.Finish{}},
	})
	if err != nil {
		return err
	}
	return s.call.CloseSend()
}

// CloseSend half-closes the call without an explicit finish message, which
// the sidecar treats the same way as Finish. After Finish it does nothing.
func (s *Stream) CloseSend() error {
	if s.closeSend("CloseSend") != nil {
		return nil
	}
	return s.call.CloseSend()
}

// send sends req unless the send side is closed.
func (s *Stream) send(what string, req *sidecarv1.StreamingSynthesizeRequest) error {
	s.mu.Lock()
	closedBy := s.closedBy
	s.mu.Unlock()
	if closedBy != "" {
		return fmt.Errorf("cosyvoice: %s after %s: %w", what, closedBy, ErrSendClosed)
	}
	return s.call.Send(req)
}

// closeSend marks the send side closed by what, or returns the error of a
// send after it was closed already.
func (s *Stream) closeSend(what string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closedBy != "" {
		return fmt.Errorf("cosyvoice: %s after %s: %w", what, s.closedBy, ErrSendClosed)
	}
	s.closedBy = what
	return nil
}

// Recv returns the next response: one Started first, then Audio, Sentence
// and Flushed responses in upstream order, and one Completed last. After the
// Completed response it returns io.EOF; a failed call returns its gRPC
// status error. Audio sequence numbers are checked: a gap is an error.
func (s *Stream) Recv() (*sidecarv1.SynthesizeResponse, error) {
	resp, err := s.recv.recv(s.call.Recv)
	if err != nil {
		// The call is over either way; release its resources now.
		s.cancel()
	}
	return resp, err
}

// Audio returns an iterator over the audio bytes of the call, chunk by
// chunk, in order, skipping the other responses (see Result). It ends after
// the last chunk of a successful call; if the call fails, the last pair
// carries the error. Breaking out of the loop early cancels the call.
func (s *Stream) Audio() iter.Seq2[[]byte, error] {
	return func(yield func([]byte, error) bool) {
		for {
			resp, err := s.Recv()
			if err == io.EOF {
				return
			}
			if err != nil {
				yield(nil, err)
				return
			}
			if a := resp.GetAudio(); a != nil && !yield(a.GetData(), nil) {
				s.cancel()
				return
			}
		}
	}
}

// Result returns what the receive side has collected so far; it is complete
// once Recv has returned io.EOF. Use it from the receive side's goroutine.
func (s *Stream) Result() *Result {
	return &s.recv.result
}

// Header returns the response headers (e.g. x-request-id), waiting for them
// if needed: the sidecar sends them with the first response. A call refused
// before that has no headers; its x-request-id is in the [Stream.Trailer].
func (s *Stream) Header() (metadata.MD, error) {
	return s.call.Header()
}

// Trailer returns the trailing metadata once Recv has returned an error or
// io.EOF, e.g. x-request-id of a refused call, or the grpc-retry-pushback-ms
// the sidecar asked a retry to wait.
func (s *Stream) Trailer() metadata.MD {
	return s.call.Trailer()
}

// Cancel ends the call now, e.g. when the caller stops listening. Pending
// and later operations fail with codes.Canceled. Cancelling the context
// given to [Client.Stream] does the same.
func (s *Stream) Cancel() {
	s.cancel()
}
