package dev.cosyvoice.sidecar.client;

import io.grpc.Status;
import io.grpc.StatusException;
import io.grpc.StatusRuntimeException;

/** Turns whatever a call failed with into the one exception type this client raises. */
final class Errors {
  private Errors() {}

  /** Return {@code t} as a {@link StatusRuntimeException}, keeping its status and trailers. */
  static StatusRuntimeException toStatusRuntimeException(Throwable t) {
    if (t instanceof StatusRuntimeException sre) {
      return sre;
    }
    if (t instanceof StatusException se) {
      return new StatusRuntimeException(se.getStatus(), se.getTrailers());
    }
    return Status.fromThrowable(t).asRuntimeException(Status.trailersFromThrowable(t));
  }

  /** A response stream that broke the contract of synthesizer.proto, as an INTERNAL status. */
  static StatusRuntimeException protocolViolation(String what) {
    return Status.INTERNAL
        .withDescription("cosyvoice-sidecar protocol violation: " + what)
        .asRuntimeException();
  }
}
