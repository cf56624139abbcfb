package cosyvoice

import (
	"io"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cosyvoice-sidecar/cosyvoice-sidecar/clients/go/sidecarv1"
)

// receiver checks the response side of either RPC against the contract
// (one started first, audio sequence numbers 0..n-1 without gaps, one
// completed last) and collects the Result on the way.
type receiver struct {
	result Result
	chunks uint64 // audio chunks seen so far: the next expected sequence
}

// recv returns the next response, io.EOF after a successful end, or the
// call's status error.
func (r *receiver) recv(next func() (*sidecarv1.SynthesizeResponse, error)) (*sidecarv1.SynthesizeResponse, error) {
	resp, err := next()
	if err == io.EOF {
		if r.result.Completed == nil {
			return nil, status.Error(codes.Internal, "cosyvoice: the call ended without a completed response")
		}
		return nil, io.EOF
	}
	if err != nil {
		return nil, err
	}
	if r.result.Completed != nil {
		return nil, status.Errorf(codes.Internal, "cosyvoice: %T after the completed response", resp.GetResponse())
	}
	if r.result.Started == nil && resp.GetStarted() == nil {
		return nil, status.Errorf(codes.Internal, "cosyvoice: %T before the started response", resp.GetResponse())
	}
	switch m := resp.GetResponse().(type) {
	case *sidecarv1.SynthesizeResponse_Started:
		if r.result.Started != nil {
			return nil, status.Error(codes.Internal, "cosyvoice: a second started response")
		}
		r.result.Started = m.Started
	case *sidecarv1.SynthesizeResponse_Audio:
		if got := m.Audio.GetSequence(); got != r.chunks {
			return nil, status.Errorf(codes.Internal, "cosyvoice: audio chunk %d arrived where %d was due", got, r.chunks)
		}
		r.chunks++
	case *sidecarv1.SynthesizeResponse_Sentence:
		r.result.Sentences = append(r.result.Sentences, m.Sentence)
	case *sidecarv1.SynthesizeResponse_Completed:
		r.result.Completed = m.Completed
	}
	return resp, nil
}
