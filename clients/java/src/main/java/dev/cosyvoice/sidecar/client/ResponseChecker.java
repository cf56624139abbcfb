package dev.cosyvoice.sidecar.client;

import dev.cosyvoice.sidecar.v1.SynthesizeResponse;
import io.grpc.StatusRuntimeException;

/**
 * Checks the order synthesizer.proto promises for a response stream: one {@code started} first,
 * audio sequence numbers from 0 without gaps, exactly one {@code completed}, last.
 *
 * <p>Not thread-safe; one instance follows one call.
 */
final class ResponseChecker {
  private boolean started;
  private boolean completed;
  private long nextSequence;

  /**
   * Accept the next response of the call.
   *
   * @throws StatusRuntimeException with code INTERNAL when the response is out of order
   */
  void accept(SynthesizeResponse response) {
    if (completed) {
      throw Errors.protocolViolation("a response after completed: " + response.getResponseCase());
    }
    switch (response.getResponseCase()) {
      case STARTED -> {
        if (started) {
          throw Errors.protocolViolation("a second started");
        }
        started = true;
      }
      case AUDIO -> {
        requireStarted(response);
        long sequence = response.getAudio().getSequence();
        if (sequence != nextSequence) {
          throw Errors.protocolViolation(
              "audio sequence " + sequence + " where " + nextSequence + " was expected");
        }
        nextSequence++;
      }
      case COMPLETED -> {
        requireStarted(response);
        completed = true;
      }
      case SENTENCE, FLUSHED -> requireStarted(response);
      case RESPONSE_NOT_SET -> throw Errors.protocolViolation("an empty response");
    }
  }

  /**
   * The response stream ended with status OK.
   *
   * @throws StatusRuntimeException with code INTERNAL when no {@code completed} was received
   */
  void end() {
    if (!completed) {
      throw Errors.protocolViolation("the stream ended without completed");
    }
  }

  private void requireStarted(SynthesizeResponse response) {
    if (!started) {
      throw Errors.protocolViolation(response.getResponseCase() + " before started");
    }
  }
}
