/**
 * Java client of cosyvoice-sidecar: streaming text-to-speech over gRPC.
 *
 * <p>{@link dev.cosyvoice.sidecar.client.SynthesizerClient} is the entry point. It offers
 *
 * <ul>
 *   <li>a blocking API: {@link dev.cosyvoice.sidecar.client.SynthesizerClient#synthesize} returns
 *       a {@link dev.cosyvoice.sidecar.client.ResponseStream}, an iterator over the responses
 *       that can be closed early to cancel the call, and {@link
 *       dev.cosyvoice.sidecar.client.SynthesizerClient#synthesizeAll} collects the whole audio
 *       into a {@link dev.cosyvoice.sidecar.client.SynthesisResult};
 *   <li>an async API for the bidirectional {@code StreamingSynthesize} call: {@link
 *       dev.cosyvoice.sidecar.client.SynthesizerClient#streamingSynthesize} returns a {@link
 *       dev.cosyvoice.sidecar.client.StreamingSession} to send text fragments into, and delivers
 *       the responses to a {@code StreamObserver} or a {@link
 *       dev.cosyvoice.sidecar.client.SynthesisListener}.
 * </ul>
 *
 * <p>Every failure of a call is an {@link io.grpc.StatusRuntimeException} carrying the sidecar's
 * status code and message unchanged (for example {@code INVALID_ARGUMENT} naming the field).
 * The messages themselves are the generated classes of {@code dev.cosyvoice.sidecar.v1}.
 */
package dev.cosyvoice.sidecar.client;
