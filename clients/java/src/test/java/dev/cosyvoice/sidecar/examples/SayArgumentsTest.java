package dev.cosyvoice.sidecar.examples;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;

/** Say rejects bad command lines with status 2 before it connects anywhere. */
class SayArgumentsTest {
  private final ByteArrayOutputStream out = new ByteArrayOutputStream();
  private final ByteArrayOutputStream err = new ByteArrayOutputStream();

  private int say(String... args) {
    return Say.run(
        args,
        new PrintStream(out, true, StandardCharsets.UTF_8),
        new PrintStream(err, true, StandardCharsets.UTF_8));
  }

  @Test
  void unknownFlagIsAnError() {
    assertEquals(2, say("--volume", "3", "text"));
    assertTrue(err.toString(StandardCharsets.UTF_8).contains("unknown flag: --volume"), err::toString);
  }

  @Test
  void missingTextIsAnError() {
    assertEquals(2, say("--out", "x.wav"));
    assertTrue(err.toString(StandardCharsets.UTF_8).contains("no text given"), err::toString);
  }

  @Test
  void badFormatAndSampleRateAreErrors() {
    assertEquals(2, say("--format", "flac", "text"));
    assertEquals(2, say("--sample-rate", "fast", "text"));
    assertEquals(2, say("text", "--voice"));
  }

  @Test
  void helpPrintsUsage() {
    assertEquals(0, say("--help"));
    assertTrue(out.toString(StandardCharsets.UTF_8).startsWith("usage: Say"), out::toString);
  }
}
