/* See edgeloop_frame.h. */
#include "edgeloop_frame.h"

#include <string.h>

uint32_t el_crc32(const uint8_t *data, size_t n) {
    /* CRC-32/ISO-HDLC (zlib's): reflected polynomial 0xEDB88320, bit by bit, no table:
     * small firmware first; 8 shifts a byte is plenty at serial speeds. */
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= data[i];
        for (int k = 0; k < 8; k++)
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

size_t el_cobs_encode(const uint8_t *in, size_t n, uint8_t *out) {
    size_t o = 0, code_at = 0;
    uint8_t code = 1;
    out[o++] = 0; /* placeholder for the first code */
    for (size_t i = 0; i < n; i++) {
        if (in[i] == 0) {
            out[code_at] = code;
            code_at = o++;
            code = 1;
            continue;
        }
        out[o++] = in[i];
        if (++code == 255) { /* a full block: no zero implied after it */
            out[code_at] = code;
            code_at = o++;
            code = 1;
        }
    }
    out[code_at] = code;
    return o;
}

long el_cobs_decode(const uint8_t *in, size_t n, uint8_t *out) {
    size_t i = 0, o = 0;
    while (i < n) {
        uint8_t code = in[i];
        if (code == 0 || i + code > n) return EL_E_COBS;
        for (size_t k = 1; k < code; k++) out[o++] = in[i + k];
        i += code;
        if (code != 255 && i < n) out[o++] = 0;
    }
    return (long)o;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int k = 0; k < 4; k++) p[k] = (uint8_t)(v >> (8 * k)); }

long el_frame_encode(uint8_t type, uint8_t flags, uint16_t seq, const uint8_t *payload, uint16_t length,
                     uint8_t *out, size_t cap) {
    uint8_t raw[EL_MAX_FRAME];
    if (length > EL_MAX_PAYLOAD) return EL_E_SPACE;
    size_t n = EL_HEADER_SIZE + (size_t)length + 4;
    if (cap < n + n / 254 + 2) return EL_E_SPACE;
    raw[0] = EL_VERSION; raw[1] = type; raw[2] = flags;
    put16(raw + 3, seq); put16(raw + 5, length);
    if (length) memcpy(raw + EL_HEADER_SIZE, payload, length);
    put32(raw + EL_HEADER_SIZE + length, el_crc32(raw, EL_HEADER_SIZE + (size_t)length));
    size_t o = el_cobs_encode(raw, n, out);
    out[o++] = 0;
    return (long)o;
}

int el_frame_decode(const uint8_t *in, size_t n, el_frame *frame, uint8_t *scratch) {
    if (n > EL_MAX_ENCODED) return EL_E_LENGTH;
    long m = el_cobs_decode(in, n, scratch);
    if (m < 0) return EL_E_COBS;
    if (m < EL_HEADER_SIZE + 4) return EL_E_SHORT;
    size_t body = (size_t)m - 4;
    uint32_t crc = (uint32_t)scratch[body] | (uint32_t)scratch[body + 1] << 8 |
                   (uint32_t)scratch[body + 2] << 16 | (uint32_t)scratch[body + 3] << 24;
    if (el_crc32(scratch, body) != crc) return EL_E_CRC;
    if (scratch[0] != EL_VERSION) return EL_E_VERSION;
    frame->version = scratch[0];
    frame->type = scratch[1];
    frame->flags = scratch[2];
    frame->seq = (uint16_t)(scratch[3] | scratch[4] << 8);
    frame->length = (uint16_t)(scratch[5] | scratch[6] << 8);
    if (frame->length != body - EL_HEADER_SIZE) return EL_E_LENGTH;
    frame->payload = scratch + EL_HEADER_SIZE;
    return 0;
}
