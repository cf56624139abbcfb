package dev.cosyvoice.sidecar.client;

import static org.junit.jupiter.api.Assertions.fail;

import dev.cosyvoice.sidecar.v1.SynthesizeResponse;
import io.grpc.Status;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * A {@code StreamObserver} that queues responses for the test thread, which reads them with
 * bounded waits. Not a mock: it sits at the end of a real call.
 */
final class CollectingObserver implements StreamObserver<SynthesizeResponse> {
  private final BlockingQueue<SynthesizeResponse> queue = new LinkedBlockingQueue<>();
  private final CompletableFuture<Status> end = new CompletableFuture<>();
  /** Every response the test thread took from the queue, in order. */
  final List<SynthesizeResponse> received = new ArrayList<>();

  @Override
  public void onNext(SynthesizeResponse response) {
    queue.add(response);
  }

  @Override
  public void onError(Throwable t) {
    end.complete(Status.fromThrowable(t));
  }

  @Override
  public void onCompleted() {
    end.complete(Status.OK);
  }

  /** Take responses until one of {@code kind} arrives (bounded) and return it. */
  SynthesizeResponse awaitNext(SynthesizeResponse.ResponseCase kind, Duration timeout)
      throws InterruptedException {
    Instant deadline = Instant.now().plus(timeout);
    while (true) {
      long left = Duration.between(Instant.now(), deadline).toMillis();
      SynthesizeResponse response = left <= 0 ? null : queue.poll(left, TimeUnit.MILLISECONDS);
      if (response == null) {
        fail("no " + kind + " response within " + timeout + "; end: " + end.getNow(null)
            + "; received: " + received.size() + " responses");
      }
      received.add(response);
      if (response.getResponseCase() == kind) {
        return response;
      }
    }
  }

  /** Wait (bounded) for the end of the call, take the remaining responses, return its status. */
  Status awaitEnd(Duration timeout) throws InterruptedException {
    Status status;
    try {
      status = end.get(timeout.toMillis(), TimeUnit.MILLISECONDS);
    } catch (TimeoutException e) {
      throw new AssertionError("the call did not end within " + timeout, e);
    } catch (ExecutionException e) {
      throw new AssertionError("unreachable: the future is only completed normally", e);
    }
    queue.drainTo(received);
    return status;
  }
}
