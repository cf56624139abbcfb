package dev.cosyvoice.sidecar.client;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;

/** RIFF/WAVE headers for the raw 16-bit little-endian mono PCM the sidecar returns. */
public final class Wav {
  /** Size of the canonical header {@link #pcm16MonoHeader} writes. */
  public static final int HEADER_BYTES = 44;

  private static final int CHANNELS = 1;
  private static final int BITS_PER_SAMPLE = 16;

  private Wav() {}

  /**
   * Return the 44-byte canonical WAV header for {@code dataBytes} bytes of 16-bit signed
   * little-endian mono samples at {@code sampleRateHz}.
   *
   * @throws IllegalArgumentException when the sample rate is not positive, or the data length is
   *     negative, odd, or too large for a RIFF file
   */
  public static byte[] pcm16MonoHeader(int sampleRateHz, long dataBytes) {
    if (sampleRateHz <= 0) {
      throw new IllegalArgumentException("sampleRateHz must be > 0, got " + sampleRateHz);
    }
    if (dataBytes < 0 || dataBytes % 2 != 0 || dataBytes > 0xFFFF_FFFFL - 36) {
      throw new IllegalArgumentException(
          "dataBytes must be an even count of PCM bytes that fits a RIFF file, got " + dataBytes);
    }
    int blockAlign = CHANNELS * BITS_PER_SAMPLE / 8;
    ByteBuffer header = ByteBuffer.allocate(HEADER_BYTES).order(ByteOrder.LITTLE_ENDIAN);
    header.put("RIFF".getBytes(StandardCharsets.US_ASCII));
    header.putInt((int) (36 + dataBytes));
    header.put("WAVE".getBytes(StandardCharsets.US_ASCII));
    header.put("fmt ".getBytes(StandardCharsets.US_ASCII));
    header.putInt(16); // size of the PCM fmt chunk
    header.putShort((short) 1); // WAVE_FORMAT_PCM
    header.putShort((short) CHANNELS);
    header.putInt(sampleRateHz);
    header.putInt(sampleRateHz * blockAlign); // byte rate
    header.putShort((short) blockAlign);
    header.putShort((short) BITS_PER_SAMPLE);
    header.put("data".getBytes(StandardCharsets.US_ASCII));
    header.putInt((int) dataBytes);
    return header.array();
  }

  /** Return {@code pcm} (16-bit signed little-endian mono) behind a WAV header. */
  public static byte[] wrapPcm16Mono(byte[] pcm, int sampleRateHz) {
    byte[] header = pcm16MonoHeader(sampleRateHz, pcm.length);
    byte[] wav = new byte[header.length + pcm.length];
    System.arraycopy(header, 0, wav, 0, header.length);
    System.arraycopy(pcm, 0, wav, header.length, pcm.length);
    return wav;
  }
}
