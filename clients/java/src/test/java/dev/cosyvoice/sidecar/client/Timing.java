package dev.cosyvoice.sidecar.client;

import java.time.Duration;

/**
 * Test time bounds, scaled by one environment variable for slow machines: a slow CI machine sets
 * {@code COSYVOICE_TEST_TIME_SCALE=3} instead of tests growing sleeps (as in tests/timing.py).
 */
final class Timing {
  static final double TIME_SCALE = parseScale(System.getenv("COSYVOICE_TEST_TIME_SCALE"));

  private Timing() {}

  /** Return {@code seconds} times the machine's time scale. */
  static Duration scaled(double seconds) {
    return Duration.ofNanos((long) (seconds * TIME_SCALE * 1e9));
  }

  private static double parseScale(String value) {
    if (value == null || value.isBlank()) {
      return 1.0;
    }
    double scale = Double.parseDouble(value);
    if (!(scale > 0)) {
      throw new IllegalArgumentException("COSYVOICE_TEST_TIME_SCALE must be > 0, got " + value);
    }
    return scale;
  }
}
