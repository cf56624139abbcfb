package dev.cosyvoice.sidecar.client;

import dev.cosyvoice.sidecar.v1.SynthesizeResponse;
import io.grpc.Context;
import io.grpc.StatusRuntimeException;
import java.util.Iterator;
import java.util.NoSuchElementException;

/**
 * The responses of one {@code Synthesize} call, read with blocking {@link #hasNext()} / {@link
 * #next()}.
 *
 * <p>Responses arrive in the order synthesizer.proto promises: one {@code started}, then {@code
 * audio} and {@code sentence} messages, then one {@code completed}; the iterator checks that order
 * and fails with {@code INTERNAL} if the server breaks it. A failed call makes {@code hasNext()}
 * or {@code next()} throw the call's {@link StatusRuntimeException}, status message intact.
 *
 * <p>Use it in try-with-resources: {@link #close()} cancels the call if it is still running, which
 * cancels the upstream DashScope task, so a reader that stops early does not leak the call. {@link
 * #close()} may be called from another thread to interrupt a blocked read; iteration itself is
 * not thread-safe.
 */
public final class ResponseStream implements Iterator<SynthesizeResponse>, AutoCloseable {
  private final Iterator<SynthesizeResponse> responses;
  private final Context.CancellableContext context;
  private final ResponseChecker checker = new ResponseChecker();
  private boolean ended;

  ResponseStream(Iterator<SynthesizeResponse> responses, Context.CancellableContext context) {
    this.responses = responses;
    this.context = context;
  }

  /**
   * Return true if another response is available, blocking until one arrives or the call ends.
   *
   * @throws StatusRuntimeException when the call failed or was cancelled
   */
  @Override
  public boolean hasNext() {
    if (ended) {
      return false;
    }
    boolean more;
    try {
      more = responses.hasNext();
    } catch (RuntimeException e) {
      ended = true;
      close();
      throw Errors.toStatusRuntimeException(e);
    }
    if (!more) {
      ended = true;
      close();
      checker.end();
    }
    return more;
  }

  /**
   * Return the next response, blocking until it arrives.
   *
   * @throws NoSuchElementException when the call completed
   * @throws StatusRuntimeException when the call failed or was cancelled
   */
  @Override
  public SynthesizeResponse next() {
    if (!hasNext()) {
      throw new NoSuchElementException("the call completed");
    }
    SynthesizeResponse response = responses.next();
    try {
      checker.accept(response);
    } catch (StatusRuntimeException e) {
      ended = true;
      context.cancel(e);
      throw e;
    }
    return response;
  }

  /**
   * Cancel the call unless it already ended; the server then cancels the upstream task. Safe to
   * call more than once and from any thread.
   */
  @Override
  public void close() {
    context.cancel(null);
  }
}
