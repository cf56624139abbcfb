package dev.cosyvoice.sidecar.client;

import dev.cosyvoice.sidecar.v1.AudioChunk;
import dev.cosyvoice.sidecar.v1.Completed;
import dev.cosyvoice.sidecar.v1.FlushAcknowledged;
import dev.cosyvoice.sidecar.v1.SentenceTiming;
import dev.cosyvoice.sidecar.v1.Started;
import io.grpc.StatusRuntimeException;

/**
 * Typed callbacks for the responses of a {@link StreamingSession}, an alternative to a raw {@code
 * StreamObserver<SynthesizeResponse>}.
 *
 * <p>Callbacks run one at a time, in response order, on a gRPC executor thread; they must not
 * block for long. Every call ends with exactly one of {@link #onCompleted} (the call succeeded and
 * every audio byte has been delivered) or {@link #onError}. The order of the other callbacks is
 * checked: a server that breaks the contract of synthesizer.proto ends the call with {@code
 * INTERNAL}.
 */
public interface SynthesisListener {
  /** The upstream task started; the first callback of a successful call. */
  default void onStarted(Started started) {}

  /** The next piece of audio; sequence numbers start at 0 and have no gaps. */
  void onAudio(AudioChunk chunk);

  /** A sentence ended; its timing, with word timings when they were requested. */
  default void onSentence(SentenceTiming sentence) {}

  /** A {@link StreamingSession#flush()} has been passed upstream, in order with the audio. */
  default void onFlushed(FlushAcknowledged flushed) {}

  /** The call completed: every audio byte has been delivered. The last callback. */
  default void onCompleted(Completed completed) {}

  /**
   * The call failed, was cancelled, or its deadline expired. The last callback.
   *
   * @param error the call's status with the server's message intact, e.g. {@code
   *     INVALID_ARGUMENT: config.volume must be ...}
   */
  void onError(StatusRuntimeException error);
}
