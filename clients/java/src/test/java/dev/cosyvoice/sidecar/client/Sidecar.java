package dev.cosyvoice.sidecar.client;

import static org.junit.jupiter.api.Assertions.fail;

import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.ListValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.URI;
import java.net.URLEncoder;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;

/**
 * A live cosyvoice-sidecar on the embedded DashScope emulator, run as a subprocess for the tests.
 *
 * <p>{@link #start} runs {@code $COSYVOICE_SIDECAR_BIN serve --emulator --listen 127.0.0.1:0} and
 * waits (bounded) for the two lines the sidecar prints on stdout when it is ready: {@code emulator
 * on URL} and {@code serving on ADDR}. Its stderr goes to a log file under {@code target/}. {@link
 * #stop} sends SIGTERM and waits for the exit. The emulator's HTTP side ({@code /_emulator/stats},
 * {@code /_emulator/knobs}) is read with {@link HttpClient}.
 */
final class Sidecar {
  private static final String BIN_ENV = "COSYVOICE_SIDECAR_BIN";
  private static final String EMULATOR_PREFIX = "emulator on ";
  private static final String SERVING_PREFIX = "serving on ";

  private final Process process;
  private final Path log;
  private final String target;
  private final URI emulatorHttp;
  private final HttpClient http =
      HttpClient.newBuilder()
          .proxy(HttpClient.Builder.NO_PROXY)
          .connectTimeout(Timing.scaled(5))
          .build();

  private Sidecar(Process process, Path log, String target, URI emulatorHttp) {
    this.process = process;
    this.log = log;
    this.target = target;
    this.emulatorHttp = emulatorHttp;
  }

  /** Return true when env {@code CI} is set: then nothing may be skipped. */
  static boolean inCi() {
    String ci = System.getenv("CI");
    return ci != null && !ci.isEmpty();
  }

  /**
   * Return why the tests cannot run here (no {@code COSYVOICE_SIDECAR_BIN}), or null when they can.
   * When {@code CI} is set a missing sidecar fails instead: in CI nothing may be skipped.
   */
  static String unavailable() {
    String bin = System.getenv(BIN_ENV);
    if (bin != null && !bin.isBlank()) {
      return null;
    }
    if (inCi()) {
      fail(BIN_ENV + " is not set, and CI is set: the Java client tests must run in CI");
    }
    return BIN_ENV
        + " is not set: these tests need a live sidecar; run them with `make test-java`"
        + " or set it to the cosyvoice-sidecar executable";
  }

  /**
   * Start the sidecar, with {@code serveArgs} added to its {@code serve} flags, and wait until it
   * serves; see {@link #unavailable()} first.
   */
  static Sidecar start(String name, String... serveArgs) throws IOException, InterruptedException {
    String bin = System.getenv(BIN_ENV);
    Path log = Path.of("target", "sidecar-" + name + ".log");
    Files.createDirectories(log.getParent());
    List<String> command =
        new ArrayList<>(List.of(bin, "serve", "--emulator", "--listen", "127.0.0.1:0"));
    command.addAll(List.of(serveArgs));
    Process process = new ProcessBuilder(command).redirectError(log.toFile()).start();
    BlockingQueue<String> lines = new LinkedBlockingQueue<>();
    Thread reader = new Thread(() -> drain(process, lines), "sidecar-stdout-" + name);
    reader.setDaemon(true);
    reader.start();

    String emulatorUrl = null;
    String servingAddress = null;
    Instant deadline = Instant.now().plus(Timing.scaled(30));
    try {
      while (servingAddress == null) {
        Duration left = Duration.between(Instant.now(), deadline);
        String line = left.isNegative() ? null : lines.poll(left.toMillis(), TimeUnit.MILLISECONDS);
        if (line == null) {
          throw new AssertionError(
              "the sidecar did not print `" + SERVING_PREFIX + "ADDR` in time" + tail(log, process));
        }
        if (line.startsWith(EMULATOR_PREFIX)) {
          emulatorUrl = line.substring(EMULATOR_PREFIX.length()).trim();
        } else if (line.startsWith(SERVING_PREFIX)) {
          servingAddress = line.substring(SERVING_PREFIX.length()).trim();
        } else if (line.equals(EOF)) {
          throw new AssertionError("the sidecar exited before serving" + tail(log, process));
        }
      }
      if (emulatorUrl == null) {
        throw new AssertionError(
            "the sidecar printed `serving on` before `emulator on`" + tail(log, process));
      }
    } catch (AssertionError | RuntimeException e) {
      process.destroyForcibly();
      throw e;
    }
    URI ws = URI.create(emulatorUrl);
    URI http = URI.create("http://" + ws.getHost() + ":" + ws.getPort());
    return new Sidecar(process, log, servingAddress, http);
  }

  private static final String EOF = "\0EOF";

  /** Keep reading stdout so that the sidecar never blocks on a full pipe. */
  private static void drain(Process process, BlockingQueue<String> lines) {
    try (BufferedReader out =
        new BufferedReader(
            new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
      for (String line = out.readLine(); line != null; line = out.readLine()) {
        lines.add(line);
      }
    } catch (IOException e) {
      // The process is gone; EOF below tells the waiter.
    }
    lines.add(EOF);
  }

  private static String tail(Path log, Process process) {
    String status = process.isAlive() ? "still running" : "exited " + process.exitValue();
    try {
      List<String> all = Files.readAllLines(log, StandardCharsets.UTF_8);
      String last = all.subList(Math.max(0, all.size() - 30), all.size()).stream()
          .collect(Collectors.joining("\n  "));
      return " (" + status + "); last lines of " + log + ":\n  " + last;
    } catch (IOException e) {
      return " (" + status + "); no log at " + log;
    }
  }

  /** The sidecar's gRPC address, HOST:PORT. */
  String target() {
    return target;
  }

  /**
   * Send SIGTERM, wait (bounded) for the exit, and return the exit status; a sidecar that does not
   * exit in time is killed and fails the test.
   */
  int stop() throws InterruptedException {
    process.destroy();
    if (!process.waitFor(Timing.scaled(20).toMillis(), TimeUnit.MILLISECONDS)) {
      process.destroyForcibly();
      process.waitFor(Timing.scaled(5).toMillis(), TimeUnit.MILLISECONDS);
      fail("the sidecar did not exit within 20 s of SIGTERM" + tail(log, process));
    }
    return process.exitValue();
  }

  /** A description of the sidecar for assertion messages, with the end of its log. */
  String describe() {
    return tail(log, process);
  }

  /** GET {@code /_emulator/stats}, as a Struct. */
  Struct stats() throws IOException, InterruptedException {
    return getJson("/_emulator/stats");
  }

  /** GET {@code /_emulator/knobs} with {@code knobs} as query parameters; returns the knobs. */
  Struct knobs(Map<String, String> knobs) throws IOException, InterruptedException {
    String query = knobs.entrySet().stream()
        .map(e -> enc(e.getKey()) + "=" + enc(e.getValue()))
        .collect(Collectors.joining("&"));
    return getJson("/_emulator/knobs" + (query.isEmpty() ? "" : "?" + query));
  }

  /** The emulator's record of upstream task {@code taskId}, if it has one. */
  Optional<Struct> task(String taskId) throws IOException, InterruptedException {
    ListValue tasks = stats().getFieldsOrThrow("tasks").getListValue();
    for (Value task : tasks.getValuesList()) {
      Struct fields = task.getStructValue();
      if (taskId.equals(fields.getFieldsOrDefault("task_id", Value.getDefaultInstance())
          .getStringValue())) {
        return Optional.of(fields);
      }
    }
    return Optional.empty();
  }

  /**
   * Poll the emulator (bounded) until task {@code taskId} has one of {@code outcomes}; return the
   * task, or fail naming the outcome it was left in.
   */
  Struct awaitTaskOutcome(String taskId, Duration timeout, String... outcomes)
      throws IOException, InterruptedException {
    Instant deadline = Instant.now().plus(timeout);
    Optional<Struct> task = Optional.empty();
    while (true) {
      task = task(taskId);
      if (task.isPresent()) {
        String outcome = task.get().getFieldsOrThrow("outcome").getStringValue();
        for (String wanted : outcomes) {
          if (wanted.equals(outcome)) {
            return task.get();
          }
        }
      }
      if (Instant.now().isAfter(deadline)) {
        fail("emulator task " + taskId + " did not reach " + List.of(outcomes) + " within "
            + timeout + "; last seen: " + task.map(Sidecar::json).orElse("no such task"));
      }
      Thread.sleep(50);
    }
  }

  private Struct getJson(String path) throws IOException, InterruptedException {
    HttpRequest request =
        HttpRequest.newBuilder(emulatorHttp.resolve(path)).timeout(Timing.scaled(10)).GET().build();
    HttpResponse<String> response = http.send(request, HttpResponse.BodyHandlers.ofString());
    if (response.statusCode() != 200) {
      fail("GET " + path + " answered " + response.statusCode() + ": " + response.body());
    }
    Struct.Builder struct = Struct.newBuilder();
    JsonFormat.parser().merge(response.body(), struct);
    return struct.build();
  }

  /** Return {@code struct} as compact JSON, for messages. */
  static String json(Struct struct) {
    try {
      return JsonFormat.printer().omittingInsignificantWhitespace().print(struct);
    } catch (InvalidProtocolBufferException e) {
      return struct.toString();
    }
  }

  private static String enc(String s) {
    return URLEncoder.encode(s, StandardCharsets.UTF_8);
  }
}
