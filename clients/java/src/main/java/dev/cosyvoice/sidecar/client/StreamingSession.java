package dev.cosyvoice.sidecar.client;

import dev.cosyvoice.sidecar.v1.Completed;
import dev.cosyvoice.sidecar.v1.Finish;
import dev.cosyvoice.sidecar.v1.Flush;
import dev.cosyvoice.sidecar.v1.StreamingSynthesizeRequest;
import dev.cosyvoice.sidecar.v1.SynthesisConfig;
import dev.cosyvoice.sidecar.v1.SynthesizeResponse;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.ClientResponseObserver;
import io.grpc.stub.StreamObserver;
import java.util.Locale;
import java.util.concurrent.CompletableFuture;
import java.util.function.Consumer;

/**
 * The sending side of one {@code StreamingSynthesize} call: text fragments go in with {@link
 * #sendText}, audio comes out through the observer or listener given to {@link
 * SynthesizerClient#streamingSynthesize}.
 *
 * <p>The session sends its {@code SynthesisConfig} first, by itself. Then any number of {@link
 * #sendText} and {@link #flush} calls, and one {@link #finish}; or {@link #cancel} at any time,
 * which cancels the upstream DashScope task too.
 *
 * <p>States: open → finished (after {@link #finish}) or cancelled (after {@link #cancel}); and the
 * call may end on its own (error, deadline) while open. Sending in any state but open throws
 * {@link IllegalStateException} naming the call and the state, and sends nothing: after {@link
 * #finish} the call goes on, and its audio and {@code completed} still arrive. The methods are
 * thread-safe.
 *
 * <p>Requests are buffered without limit when the network is slower than the sender; text
 * fragments are small, so this only matters for senders of megabytes.
 */
public final class StreamingSession {
  private enum State {
    OPEN,
    FINISHED,
    CANCELLED
  }

  private final CompletableFuture<Completed> completion = new CompletableFuture<>();
  private ClientCallStreamObserver<StreamingSynthesizeRequest> requests;
  private State state = State.OPEN;
  /** Why the call ended on its own (completed, failed, deadline); null while it runs. */
  private Status endedWith;

  private StreamingSession() {}

  /**
   * Start a call with {@code start} (the async stub's {@code streamingSynthesize}), send the
   * config, and return the session.
   */
  static StreamingSession start(
      Consumer<StreamObserver<SynthesizeResponse>> start,
      SynthesisConfig config,
      StreamObserver<SynthesizeResponse> responses) {
    StreamingSession session = new StreamingSession();
    start.accept(session.new Relay(responses));
    synchronized (session) {
      session.requests.onNext(StreamingSynthesizeRequest.newBuilder().setConfig(config).build());
    }
    return session;
  }

  /**
   * Send a fragment of text. Fragments may split the text anywhere, even inside a word; the server
   * decides where sentences end.
   *
   * @throws IllegalArgumentException when {@code text} is empty
   * @throws IllegalStateException after {@link #finish}, {@link #cancel}, or the end of the call
   */
  public synchronized void sendText(String text) {
    if (text.isEmpty()) {
      throw new IllegalArgumentException("text must not be empty");
    }
    send("sendText", StreamingSynthesizeRequest.newBuilder().setText(text).build());
  }

  /**
   * Ask the server to synthesize the text buffered so far now, without waiting for the end of a
   * sentence; answered by a {@code flushed} response in order with the audio.
   *
   * @throws IllegalStateException after {@link #finish}, {@link #cancel}, or the end of the call
   */
  public synchronized void flush() {
    send("flush",
        StreamingSynthesizeRequest.newBuilder().setFlush(Flush.getDefaultInstance()).build());
  }

  /**
   * No more text: the server synthesizes what is buffered and completes the call. Sends {@code
   * finish} and half-closes the request stream.
   *
   * @throws IllegalStateException after {@link #finish}, {@link #cancel}, or the end of the call
   */
  public synchronized void finish() {
    send("finish",
        StreamingSynthesizeRequest.newBuilder().setFinish(Finish.getDefaultInstance()).build());
    requests.onCompleted();
    state = State.FINISHED;
  }

  /**
   * Cancel the call; the server cancels the upstream task. The observer then sees {@code
   * CANCELLED} unless the call had already ended. Safe to call more than once, in any state.
   *
   * @param reason why, for the local {@code CANCELLED} status; may be null
   */
  public synchronized void cancel(String reason) {
    if (state == State.CANCELLED) {
      return;
    }
    state = State.CANCELLED;
    requests.cancel(reason == null ? "cancelled by the caller" : reason, null);
  }

  /**
   * Return a future of the call's outcome: the {@code completed} response once the call ended
   * successfully, or a {@link StatusRuntimeException} (wrapped by the future's {@code get}) when
   * it failed, was cancelled, or its deadline expired. It completes after the observer's last
   * callback returned. Each call returns a new view; completing or cancelling it does not
   * affect the call (use {@link #cancel} for that).
   */
  public CompletableFuture<Completed> completion() {
    return completion.copy();
  }

  private void send(String what, StreamingSynthesizeRequest request) {
    if (state != State.OPEN) {
      String after = state == State.FINISHED ? "finish()" : "cancel()";
      throw new IllegalStateException(what + "() after " + after + ": the session is "
          + state.name().toLowerCase(Locale.ROOT) + " and takes no more requests");
    }
    if (endedWith != null) {
      String why = endedWith.getDescription() == null ? "" : ": " + endedWith.getDescription();
      throw new IllegalStateException(
          what + "(): the call already ended with " + endedWith.getCode() + why);
    }
    requests.onNext(request);
  }

  private synchronized void ended(Status status) {
    endedWith = status;
  }

  /**
   * Receives the call's responses: checks their order, keeps {@code completed} for {@link
   * #completion()}, and forwards everything to the caller's observer.
   */
  private final class Relay
      implements ClientResponseObserver<StreamingSynthesizeRequest, SynthesizeResponse> {
    private final StreamObserver<SynthesizeResponse> responses;
    private final ResponseChecker checker = new ResponseChecker();
    private Completed completed;
    private boolean done;

    Relay(StreamObserver<SynthesizeResponse> responses) {
      this.responses = responses;
    }

    @Override
    public void beforeStart(ClientCallStreamObserver<StreamingSynthesizeRequest> requestStream) {
      requests = requestStream;
    }

    @Override
    public void onNext(SynthesizeResponse response) {
      if (done) {
        return;
      }
      try {
        checker.accept(response);
      } catch (StatusRuntimeException violation) {
        // The call is broken; end it here, and ignore the CANCELLED that follows.
        requests.cancel(violation.getMessage(), violation);
        onError(violation);
        done = true;
        return;
      }
      if (response.hasCompleted()) {
        completed = response.getCompleted();
      }
      responses.onNext(response);
    }

    @Override
    public void onError(Throwable t) {
      if (done) {
        return;
      }
      done = true;
      StatusRuntimeException error = Errors.toStatusRuntimeException(t);
      ended(error.getStatus());
      try {
        responses.onError(error);
      } finally {
        completion.completeExceptionally(error);
      }
    }

    @Override
    public void onCompleted() {
      if (done) {
        return;
      }
      try {
        checker.end();
      } catch (StatusRuntimeException violation) {
        onError(violation);
        return;
      }
      done = true;
      ended(Status.OK);
      try {
        responses.onCompleted();
      } finally {
        completion.complete(completed);
      }
    }
  }
}
